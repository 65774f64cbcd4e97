//! The one writer per local WebSocket: it joins ready items into messages
//! and flushes once.

use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use super::*;

/// Largest message the writer builds by joining items.
pub(super) const JOINED_BYTES: usize = 1 << 20;

/// A larger message goes in frames of this size: written whole, one large
/// image would pin its size in the write buffer of every socket that
/// received one.
const FRAGMENT_BYTES: usize = crate::websocket::LOCAL_WRITE_BYTES;

/// Feeds `text` as one message: one frame, or, past [`FRAGMENT_BYTES`],
/// frames of that size (sharing its bytes, not copying them), which every
/// WebSocket client joins back into the message.
pub(super) async fn feed_text<S>(sink: &mut S, text: Utf8Bytes) -> bool
where
    S: futures::Sink<Message> + Unpin,
{
    if text.len() <= FRAGMENT_BYTES {
        return sink.feed(Message::Text(text)).await.is_ok();
    }
    let bytes = Bytes::from(text);
    let mut start = 0;
    while start < bytes.len() {
        let end = (start + FRAGMENT_BYTES).min(bytes.len());
        let opcode = match start {
            0 => OpCode::Data(Data::Text),
            _ => OpCode::Data(Data::Continue),
        };
        let frame = Frame::message(bytes.slice(start..end), opcode, end == bytes.len());
        if sink.feed(Message::Frame(frame)).await.is_err() {
            return false;
        }
        start = end;
    }
    true
}

/// Writes the socket's frames as they come, until its queue closes, the
/// socket fails or `stop` comes (a client that reads nothing). Returns
/// what it may not have written, in order, for the session to send again.
pub(super) async fn write_all<S>(
    sink: &mut S,
    mut incoming: Incoming,
    mut stop: oneshot::Receiver<()>,
) -> Vec<LocalFrame>
where
    S: futures::Sink<Message> + Unpin,
{
    loop {
        let first = tokio::select! {
            first = incoming.recv() => first,
            _ = &mut stop => return incoming.unwritten(),
        };
        let Some(first) = first else {
            let _ = sink.close().await;
            return Vec::new();
        };
        let written = tokio::select! {
            written = write_ready(sink, first, &mut incoming) => written,
            _ = &mut stop => false,
        };
        if !written {
            return incoming.unwritten();
        }
        incoming.flushed();
    }
}

/// Writes what is ready: runs of items joined into one message, then one
/// flush (one write to the socket) for all of it.
pub(super) async fn write_ready<S>(sink: &mut S, first: LocalFrame, rx: &mut Incoming) -> bool
where
    S: futures::Sink<Message> + Unpin,
{
    let mut joined = String::new();
    let mut joined_task = None;
    let mut next = Some(first);
    while let Some(out) = next.take().or_else(|| rx.try_recv()) {
        match out {
            LocalFrame::Item(task, item) => {
                let other_task = joined_task.replace(task).is_some_and(|t| t != task);
                if (other_task || joined.len() + item.len() > JOINED_BYTES)
                    && !feed_joined(sink, &mut joined).await
                {
                    return false;
                }
                if joined.is_empty() {
                    joined.reserve(item.len() + 12);
                    joined.push_str("{\"data\":[");
                } else {
                    joined.push(',');
                }
                joined.push_str(&item);
            }
            LocalFrame::Message(message) => {
                if !feed_joined(sink, &mut joined).await || !feed_text(sink, message).await {
                    return false;
                }
            }
            LocalFrame::Close(code, reason) => {
                let close = Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                }));
                // Nothing follows a close frame.
                let _ = feed_joined(sink, &mut joined).await
                    && sink.feed(close).await.is_ok()
                    && sink.flush().await.is_ok();
                return false;
            }
        }
    }
    feed_joined(sink, &mut joined).await && sink.flush().await.is_ok()
}

/// Closes the message of joined items, if any, and feeds it to the sink.
pub(super) async fn feed_joined<S>(sink: &mut S, joined: &mut String) -> bool
where
    S: futures::Sink<Message> + Unpin,
{
    if joined.is_empty() {
        return true;
    }
    joined.push_str("]}");
    feed_text(sink, std::mem::take(joined).into()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large message goes in frames of at most [`FRAGMENT_BYTES`], the
    /// first a text frame, the rest continuations, the last final; joined,
    /// they are the message.
    #[tokio::test]
    async fn a_large_message_goes_in_frames_that_join_back_into_it() {
        let text: String = (0..FRAGMENT_BYTES * 3 + 100)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let mut sink: Vec<Message> = Vec::new();
        assert!(feed_text(&mut sink, text.clone().into()).await);
        assert_eq!(sink.len(), 4);
        let mut joined = Vec::new();
        for (i, message) in sink.iter().enumerate() {
            let Message::Frame(frame) = message else {
                panic!("a frame: {message:?}")
            };
            let expected = if i == 0 { Data::Text } else { Data::Continue };
            assert_eq!(frame.header().opcode, OpCode::Data(expected));
            assert_eq!(frame.header().is_final, i == 3);
            assert!(frame.payload().len() <= FRAGMENT_BYTES);
            joined.extend_from_slice(frame.payload());
        }
        assert_eq!(joined, text.as_bytes());
        // A small one is one text message.
        let mut sink: Vec<Message> = Vec::new();
        assert!(feed_text(&mut sink, "{}".into()).await);
        assert_eq!(sink, [Message::Text("{}".into())]);
    }

    /// Items of one task ready together go out as one message; another
    /// task's start a new one; whole messages keep their place.
    #[tokio::test]
    async fn the_writer_joins_ready_items_into_one_message() {
        let (tx, mut rx) = outgoing(1 << 20, Default::default());
        let (t, u) = (TaskUuid::new_v4(), TaskUuid::new_v4());
        for out in [
            LocalFrame::Item(t, r#"{"a":1}"#.into()),
            LocalFrame::Item(t, r#"{"a":2}"#.into()),
            LocalFrame::Item(u, r#"{"b":1}"#.into()),
            LocalFrame::Message(r#"{"errors":[]}"#.into()),
            LocalFrame::Item(t, r#"{"a":3}"#.into()),
        ] {
            tx.push(out).unwrap();
        }
        let first = rx.try_recv().unwrap();
        let mut sink: Vec<Message> = Vec::new();
        assert!(write_ready(&mut sink, first, &mut rx).await);
        let texts: Vec<String> = sink
            .iter()
            .map(|m| m.to_text().unwrap().to_owned())
            .collect();
        assert_eq!(
            texts,
            [
                r#"{"data":[{"a":1},{"a":2}]}"#,
                r#"{"data":[{"b":1}]}"#,
                r#"{"errors":[]}"#,
                r#"{"data":[{"a":3}]}"#
            ]
        );
    }
}
