//! What goes to one local WebSocket, and the queue it waits in, bounded in
//! bytes.
//!
//! A client that reads slowly, or not at all, must not make the daemon
//! hold without bound what it sends that client. Every frame queued for a
//! socket is counted, per socket and in the daemon's memory budget
//! ([`DoorBytes`]), from when it is queued until the writer has flushed
//! it (or the socket is gone). Past `max_socket_buffer_bytes`:
//! - the socket's reader stops reading requests (so replies such as pongs
//!   cannot pile up) and closes the socket if no room comes within
//!   `stalled_client_timeout`;
//! - results are not queued ([`Outgoing::offer`] hands them back): they
//!   wait in the task table, and the session sends them from there when
//!   room comes (or on a reconnect).
//!
//! The queue is a deque that holds nothing while empty (an idle socket
//! costs it no block of slots) and gives back what a burst grew.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::*;
use crate::dispatch::DoorBytes;

/// What goes to a local WebSocket: result items, which the writer joins
/// into one `{"data":[...]}` message with the ready items of the same
/// task, or a whole message of its own.
///
/// Only one task's items share a message: `@runware/sdk-js` hands every
/// item of a message to each task it names, so items of two tasks in one
/// message reach it twice (its bug, seen in the SDK checks).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum LocalFrame {
    /// One result item of a task, exactly as Runware sent it.
    Item(TaskUuid, bytestring::ByteString),
    /// A whole message (shared, not copied, when kept to send again).
    Message(Utf8Bytes),
    /// The socket's last frame: it closes, saying why.
    Close(CloseCode, String),
}

impl LocalFrame {
    /// What it holds, in bytes: what the socket's bound counts.
    pub(super) fn bytes(&self) -> usize {
        match self {
            LocalFrame::Item(_, item) => item.len(),
            LocalFrame::Message(m) => m.len(),
            LocalFrame::Close(_, reason) => reason.len(),
        }
    }
}

impl From<String> for LocalFrame {
    fn from(message: String) -> Self {
        LocalFrame::Message(message.into())
    }
}

/// Slots a queue or a writer's list keeps once empty; past it, what a
/// burst grew is freed.
const KEPT_SLOTS: usize = 16;

/// The sending side of a socket's queue; clones share it, and the
/// writer learns when the last is gone.
pub(super) struct Outgoing {
    queued: Arc<Queued>,
}

impl Clone for Outgoing {
    fn clone(&self) -> Self {
        self.queued.senders.fetch_add(1, Ordering::AcqRel);
        Outgoing {
            queued: Arc::clone(&self.queued),
        }
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        if self.queued.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.queued.ready.notify_one();
        }
    }
}

/// The frames waiting for the writer.
#[derive(Default)]
struct Frames {
    waiting: VecDeque<LocalFrame>,
    /// The writer is gone: nothing more is queued.
    closed: bool,
}

/// What a socket's queue holds, and who waits for room in it.
pub(super) struct Queued {
    /// The frames themselves.
    frames: Mutex<Frames>,
    /// Senders alive ([`Outgoing`] and its clones).
    senders: AtomicUsize,
    /// Woken (one permit) when a frame is queued or the last sender goes.
    ready: Notify,
    /// Bytes queued and not yet flushed.
    bytes: AtomicUsize,
    /// `max_socket_buffer_bytes`.
    budget: usize,
    /// The daemon's memory budget's part held by the doors.
    door: DoorBytes,
    /// Woken when the writer has flushed frames.
    room: Notify,
    /// Flushes so far: a waiter that saw one number waits for the next.
    flushes: AtomicU64,
    /// A result was handed back since the last flush: the queue counts as
    /// full until the writer makes progress.
    refused: AtomicBool,
    /// Woken when the queue reaches its bound.
    full: Notify,
}

impl Queued {
    fn frames(&self) -> std::sync::MutexGuard<'_, Frames> {
        // Nothing panics while holding it; a poisoned lock's frames are
        // still whole.
        self.frames.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `frame` unless the writer is gone.
    fn send(&self, frame: LocalFrame) -> Result<(), LocalFrame> {
        let mut frames = self.frames();
        if frames.closed {
            return Err(frame);
        }
        frames.waiting.push_back(frame);
        drop(frames);
        self.ready.notify_one();
        Ok(())
    }

    /// The next frame, if any; what a burst grew is freed once empty.
    fn pop(&self) -> Option<LocalFrame> {
        let mut frames = self.frames();
        let frame = frames.waiting.pop_front();
        if frames.waiting.is_empty() && frames.waiting.capacity() > KEPT_SLOTS {
            frames.waiting = VecDeque::new();
        }
        frame
    }

    /// The writer is gone: what was never taken, in order.
    fn close(&self) -> VecDeque<LocalFrame> {
        let mut frames = self.frames();
        frames.closed = true;
        std::mem::take(&mut frames.waiting)
    }

    fn is_closed(&self) -> bool {
        self.frames().closed
    }

    fn add(&self, n: usize) {
        let before = self.bytes.fetch_add(n, Ordering::AcqRel);
        self.door.add(n);
        if before < self.budget && before + n >= self.budget {
            self.full.notify_waiters();
        }
    }

    fn sub(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::AcqRel);
        self.door.sub(n);
        self.flushes.fetch_add(1, Ordering::AcqRel);
        self.refused.store(false, Ordering::Release);
        self.room.notify_waiters();
    }

    fn is_full(&self) -> bool {
        self.refused.load(Ordering::Acquire) || self.bytes.load(Ordering::Acquire) >= self.budget
    }

    /// A result did not fit: full until the next flush.
    fn refuse(&self) {
        if !self.refused.swap(true, Ordering::AcqRel) {
            self.full.notify_waiters();
        }
    }

    fn has_room_for(&self, n: usize) -> bool {
        let queued = self.bytes.load(Ordering::Acquire);
        // A frame larger than the whole budget goes alone.
        queued == 0 || queued + n <= self.budget
    }
}

/// A frame [`Outgoing::offer`] did not queue.
#[derive(Debug)]
pub(super) enum NotQueued {
    /// The socket's queue is at its bound.
    Full(LocalFrame),
    /// The socket's writer is gone.
    Gone(LocalFrame),
}

/// The writer's side: frames in order, each counted until
/// [`Incoming::flushed`]; whatever is left when it is dropped (the socket
/// went, or its writer was stopped) is counted out then. Frames taken and
/// not yet flushed are kept (cheaply: they share their bytes), so a socket
/// that dies hands them back ([`Incoming::unwritten`]) rather than losing
/// them.
pub(super) struct Incoming {
    queued: Arc<Queued>,
    /// Bytes taken from the queue and not yet flushed.
    taken: usize,
    /// The frames taken and not yet flushed.
    unflushed: Vec<LocalFrame>,
}

/// A socket's queue, within `budget` bytes, counted in `door`.
pub(super) fn outgoing(budget: usize, door: DoorBytes) -> (Outgoing, Incoming) {
    let queued = Arc::new(Queued {
        frames: Mutex::default(),
        senders: AtomicUsize::new(1),
        ready: Notify::new(),
        bytes: AtomicUsize::new(0),
        budget,
        door,
        room: Notify::new(),
        flushes: AtomicU64::new(0),
        refused: AtomicBool::new(false),
        full: Notify::new(),
    });
    let incoming = Incoming {
        queued: Arc::clone(&queued),
        taken: 0,
        unflushed: Vec::new(),
    };
    (Outgoing { queued }, incoming)
}

impl Outgoing {
    /// Queues a frame the socket owes its client whatever the bound (a
    /// reply to a request read, an error, a close): the reader stops
    /// reading while the queue is full, which bounds these.
    pub(super) fn push(&self, frame: LocalFrame) -> Result<(), LocalFrame> {
        let n = frame.bytes();
        self.queued.add(n);
        self.queued.send(frame).inspect_err(|_| self.queued.sub(n))
    }

    /// Queues a result if the queue has room for it.
    pub(super) fn offer(&self, frame: LocalFrame) -> Result<(), NotQueued> {
        if self.queued.is_closed() {
            return Err(NotQueued::Gone(frame));
        }
        if !self.queued.has_room_for(frame.bytes()) {
            self.queued.refuse();
            return Err(NotQueued::Full(frame));
        }
        self.push(frame).map_err(NotQueued::Gone)
    }

    /// Whether the queue is at its bound, or handed a result back since the
    /// writer last flushed: nothing more is read from the socket until it
    /// is not.
    pub(super) fn is_full(&self) -> bool {
        self.queued.is_full()
    }

    /// Completes once the queue has been at its bound with nothing
    /// flushed for `limit`: its client reads nothing.
    pub(super) async fn stalled_for(&self, limit: Duration) {
        loop {
            let full = self.queued.full.notified();
            tokio::pin!(full);
            full.as_mut().enable();
            if !self.is_full() {
                full.await;
                continue;
            }
            if !self.room_within(limit).await {
                return;
            }
        }
    }

    /// Waits until the queue is below its bound; false if it stayed there
    /// with nothing flushed for `limit` (each flush, the client's progress,
    /// starts the time again).
    pub(super) async fn room_within(&self, limit: Duration) -> bool {
        loop {
            let flushed = self.queued.room.notified();
            tokio::pin!(flushed);
            flushed.as_mut().enable();
            if !self.is_full() {
                return true;
            }
            if tokio::time::timeout(limit, flushed).await.is_err() {
                return false;
            }
        }
    }

    /// The queue itself, whose [`Queued::next_flush`] a session waits on
    /// to send results it could not queue.
    pub(super) fn queue(&self) -> Arc<Queued> {
        Arc::clone(&self.queued)
    }

    /// Whether `other` is this socket's queue.
    pub(super) fn same_channel(&self, other: &Outgoing) -> bool {
        Arc::ptr_eq(&self.queued, &other.queued)
    }
}

impl Queued {
    /// Whether everything queued has been flushed.
    pub(super) fn is_flushed(&self) -> bool {
        self.bytes.load(Ordering::Acquire) == 0
    }

    /// Flushes so far, for [`Queued::flushed_since`].
    pub(super) fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Acquire)
    }

    /// Waits for a flush after the one numbered `seen`: the client read
    /// something, so what did not fit may now.
    pub(super) async fn flushed_since(&self, seen: u64) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.flushes() != seen {
                return;
            }
            notified.await;
        }
    }
}

impl Incoming {
    /// The next frame, waiting for one; `None` once every sender is gone.
    pub(super) async fn recv(&mut self) -> Option<LocalFrame> {
        loop {
            if let Some(frame) = self.try_recv() {
                return Some(frame);
            }
            if self.queued.senders.load(Ordering::Acquire) == 0 {
                // A frame sent before the last sender went is still taken.
                return self.try_recv();
            }
            // A frame queued since the check left a permit: no wake is lost.
            self.queued.ready.notified().await;
        }
    }

    /// The next frame if one is ready.
    pub(super) fn try_recv(&mut self) -> Option<LocalFrame> {
        let frame = self.queued.pop()?;
        Some(self.took(frame))
    }

    fn took(&mut self, frame: LocalFrame) -> LocalFrame {
        self.taken += frame.bytes();
        self.unflushed.push(frame.clone());
        frame
    }

    /// What was taken has been written and flushed: counted out.
    pub(super) fn flushed(&mut self) {
        self.unflushed.clear();
        if self.unflushed.capacity() > KEPT_SLOTS {
            self.unflushed = Vec::new();
        }
        self.queued.sub(std::mem::take(&mut self.taken));
    }

    /// The socket is done: what it may not have written (taken but not
    /// flushed) and what it never took, in order, counted out.
    pub(super) fn unwritten(mut self) -> Vec<LocalFrame> {
        for frame in self.queued.close() {
            self.took(frame);
        }
        let frames = std::mem::take(&mut self.unflushed);
        self.flushed();
        frames
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        let never_taken = self.queued.close();
        self.taken += never_taken.iter().map(LocalFrame::bytes).sum::<usize>();
        self.flushed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: usize) -> LocalFrame {
        LocalFrame::Item(TaskUuid::new_v4(), "x".repeat(n).into())
    }

    #[test]
    fn a_full_queue_hands_results_back_and_counts_everything_it_holds() {
        let door = DoorBytes::default();
        let (out, mut incoming) = outgoing(100, door.clone());
        // A frame larger than the bound goes when the queue is empty.
        assert!(out.offer(item(150)).is_ok());
        assert!(out.is_full());
        assert!(matches!(out.offer(item(1)), Err(NotQueued::Full(_))));
        // Replies are queued whatever the bound, and counted.
        out.push(LocalFrame::Message("pong".into())).unwrap();
        assert_eq!(door.get(), 154);
        assert!(incoming.try_recv().is_some());
        assert_eq!(door.get(), 154, "counted until flushed");
        incoming.flushed();
        assert_eq!(door.get(), 4);
        assert!(!out.is_full());
        assert!(matches!(out.offer(item(97)), Err(NotQueued::Full(_))));
        // A socket that dies hands back, in order, what it took and did
        // not flush (the pong) and what it never took.
        let pong = LocalFrame::Message("pong".into());
        assert_eq!(incoming.try_recv(), Some(pong.clone()));
        let a = item(10);
        out.push(a.clone()).unwrap();
        assert_eq!(incoming.unwritten(), [pong, a]);
        assert_eq!(door.get(), 0);
        // What is left when the writer goes is counted out.
        let (out, incoming) = outgoing(100, door.clone());
        assert!(out.offer(item(96)).is_ok());
        drop(incoming);
        assert_eq!(door.get(), 0);
        assert!(matches!(out.offer(item(1)), Err(NotQueued::Gone(_))));
        assert!(out.push(item(1)).is_err());
        assert_eq!(door.get(), 0);
    }

    #[tokio::test]
    async fn an_empty_queue_holds_nothing_and_ends_when_its_senders_go() {
        let (out, mut incoming) = outgoing(1 << 20, DoorBytes::default());
        assert_eq!(
            out.queued.frames().waiting.capacity(),
            0,
            "nothing until a frame"
        );
        let other = out.clone();
        for _ in 0..1000 {
            other.push(item(1)).unwrap();
        }
        for _ in 0..1000 {
            incoming.recv().await.unwrap();
        }
        incoming.flushed();
        assert!(out.queued.frames().waiting.capacity() <= KEPT_SLOTS);
        assert!(incoming.unflushed.capacity() <= KEPT_SLOTS);
        // A frame sent just before the last sender goes is still taken,
        // then the queue ends.
        other.push(item(3)).unwrap();
        drop((out, other));
        assert_eq!(incoming.recv().await.map(|f| f.bytes()), Some(3));
        assert_eq!(incoming.recv().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_stalls_only_when_full_for_the_whole_limit() {
        let limit = Duration::from_secs(5);
        let (out, mut incoming) = outgoing(10, DoorBytes::default());
        let stalled = {
            let out = out.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                out.stalled_for(limit).await;
                start.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        out.push(item(20)).unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        // Room came before the limit: the clock starts again when full.
        incoming.try_recv().unwrap();
        incoming.flushed();
        out.push(item(20)).unwrap();
        assert!(!stalled.is_finished());
        assert_eq!(stalled.await.unwrap(), Duration::from_secs(11));
    }

    #[tokio::test]
    async fn room_comes_when_the_writer_flushes() {
        let (out, mut incoming) = outgoing(10, DoorBytes::default());
        out.push(item(20)).unwrap();
        let waiting = {
            let out = out.clone();
            tokio::spawn(async move { out.room_within(Duration::from_secs(60)).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        incoming.recv().await.unwrap();
        incoming.flushed();
        assert!(waiting.await.unwrap(), "room, not a stall");
    }
}
