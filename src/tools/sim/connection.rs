//! One client connection to the simulator: HTTP (REST) or a WebSocket,
//! and what it sends back, in batches.

use super::*;

/// One client connection: HTTP/1.1, where `/v1` is a WebSocket upgrade
/// or a REST `POST`, as Runware's URL is.
pub(super) async fn serve_http<S>(shared: Arc<Shared>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, std::convert::Infallible>(answer_http(shared, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}

pub(super) async fn answer_http(
    shared: Arc<Shared>,
    req: HttpRequest<Incoming>,
) -> HttpResponse<SimBody> {
    use http_body_util::BodyExt as _;
    let whole = |r: HttpResponse<Full<Bytes>>| r.map(|b| b.map_err(|never| match never {}).boxed());
    // `?dryRun=1` in the URL: tasks are validated, not run.
    let dry_run = crate::websocket::is_dry_run(req.uri().query());
    if crate::websocket::is_upgrade(&req) {
        let max = lock(&shared.config).max_message_bytes;
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let run = move |socket| serve_connection(shared, socket, dry_run);
        return whole(
            crate::websocket::upgrade(req, ws_config, run)
                .unwrap_or_else(|| http_answer(StatusCode::BAD_REQUEST, String::new())),
        );
    }
    if req.method() == hyper::Method::POST {
        return rest::answer(&shared, req, dry_run).await;
    }
    if req.method() == hyper::Method::GET {
        if let Some(name) = req.uri().path().strip_prefix("/media/") {
            return whole(download(&shared, name));
        }
    }
    whole(http_answer(StatusCode::METHOD_NOT_ALLOWED, String::new()))
}

/// `GET /media/NAME`: a result's file, made again from its recipe.
fn download(shared: &Shared, name: &str) -> HttpResponse<Full<Bytes>> {
    let recipe = lock(&shared.downloads).get(name, Instant::now());
    let Some((bytes, mime)) = recipe.map(downloads::Recipe::make) else {
        return http_answer(StatusCode::NOT_FOUND, String::new());
    };
    HttpResponse::builder()
        .status(StatusCode::OK)
        .header(hyper::header::CONTENT_TYPE, mime)
        .body(Full::new(Bytes::from(bytes)))
        .unwrap_or_else(|_| http_answer(StatusCode::INTERNAL_SERVER_ERROR, String::new()))
}

/// One WebSocket, authenticated by its first message, until it goes.
pub(super) async fn serve_connection<S>(shared: Arc<Shared>, ws: WebSocketStream<S>, dry_run: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let idle_timeout = lock(&shared.config).idle_timeout;
    let conn_id = {
        let mut inner = lock(&shared.inner);
        inner.next_conn += 1;
        inner.next_conn
    };
    bump(&shared, |s| {
        s.connections += 1;
        s.open_connections += 1;
    });
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    let mut commands = shared.commands.subscribe();
    let mut stall = shared.stall.subscribe();
    let mut session: Option<String> = None;
    let mut last_message = Instant::now();
    // An item taken from `rx` whose write did not finish goes back to the session.
    let mut unwritten: Vec<Outgoing> = Vec::new();

    loop {
        let stalled = *stall.borrow_and_update();
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Ok(Command::Drop) | Err(_) => break,
                Ok(Command::Close) => {
                    let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "closing".into() }))).await;
                    break;
                }
            },
            _ = stall.changed() => continue,
            msg = source.next(), if !stalled => {
                last_message = Instant::now();
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                handle_message(&shared, conn_id, &tx, &mut session, &text, dry_run);
            }
            item = rx.recv(), if !stalled => {
                let Some(first) = item else { break };
                // Whatever else is ready goes in the same message, as Runware
                // does: one frame may carry items of several tasks. Up to
                // about a megabyte: large results (base64 images) go one a
                // message, never sixteen in one message beyond any client's
                // limit.
                let mut size = approx_size(&first);
                let mut batch = vec![first];
                while batch.len() < 64 && size < BATCH_BYTES {
                    match rx.try_recv() {
                        Ok(i) => {
                            size += approx_size(&i);
                            batch.push(i);
                        }
                        Err(_) => break,
                    }
                }
                let results = batch
                    .iter()
                    .filter(|i| matches!(i, Outgoing::Data(v) if v.get("taskUUID").is_some()))
                    .count() as u64;
                if results > 0 && shared.swallow.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    // Written and counted delivered; the abort discards it.
                    bump(&shared, |s| s.results_swallowed += results);
                    break;
                }
                let frame = encode(&batch);
                if sink.send(Message::Text(frame.into())).await.is_err() {
                    unwritten = batch;
                    break;
                }
            }
            _ = sleep_until(last_message + idle_timeout) => {
                let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "idle timeout".into() }))).await;
                break;
            }
        }
    }

    // Detach: results not yet written go back to the session's buffer (or
    // to the connection that took the session over).
    rx.close();
    while let Ok(item) = rx.try_recv() {
        unwritten.push(item);
    }
    if let Some(id) = session {
        let mut inner = lock(&shared.inner);
        if let Some(s) = inner.sessions.get_mut(&id) {
            if s.conn.as_ref().map(|(c, _)| *c) == Some(conn_id) {
                s.conn = None;
                s.detached_at = Some(Instant::now());
            }
            // Only task results and errors: pongs and answers to this
            // socket's own requests mean nothing on another one.
            for item in unwritten {
                let (Outgoing::Data(v) | Outgoing::Error(v)) = &item;
                if v.get("taskUUID").is_some() {
                    route_to_session(s, item);
                }
            }
        }
    }
    bump(&shared, |s| s.open_connections -= 1);
}

/// Items batched into one message stop growing past this many bytes.
pub(super) const BATCH_BYTES: usize = 1 << 20;

/// About how many bytes an item takes as JSON: its strings, plus a little
/// per value. Cheap: large results are base64 strings.
pub(super) fn approx_size(item: &Outgoing) -> usize {
    fn walk(v: &Value) -> usize {
        match v {
            Value::String(s) => s.len() + 2,
            Value::Array(a) => a.iter().map(walk).sum::<usize>() + 2,
            Value::Object(m) => m.iter().map(|(k, v)| k.len() + 4 + walk(v)).sum::<usize>() + 2,
            _ => 8,
        }
    }
    let (Outgoing::Data(v) | Outgoing::Error(v)) = item;
    walk(v)
}

pub(super) fn encode(items: &[Outgoing]) -> String {
    let data: Vec<&Value> = items
        .iter()
        .filter_map(|i| match i {
            Outgoing::Data(v) => Some(v),
            Outgoing::Error(_) => None,
        })
        .collect();
    let errors: Vec<&Value> = items
        .iter()
        .filter_map(|i| match i {
            Outgoing::Error(v) => Some(v),
            Outgoing::Data(_) => None,
        })
        .collect();
    let mut frame = Map::new();
    if !data.is_empty() {
        frame.insert("data".into(), json!(data));
    }
    if !errors.is_empty() {
        frame.insert("errors".into(), json!(errors));
    }
    Value::Object(frame).to_string()
}

pub(super) fn route_to_session(session: &mut Session, item: Outgoing) {
    if let Some((_, tx)) = &session.conn {
        match tx.send(item) {
            Ok(()) => return,
            Err(mpsc::error::SendError(item)) => {
                session.conn = None;
                session.buffer.push_back((Instant::now(), item));
                return;
            }
        }
    }
    session.buffer.push_back((Instant::now(), item));
}
