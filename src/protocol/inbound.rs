//! What the daemon receives: a server message parsed into items, each
//! about one task or about the connection.

use super::*;

/// One understood piece of a server message.
#[derive(Debug)]
pub enum Inbound<'a> {
    /// Authentication succeeded; this is the session's UUID.
    Authenticated(SessionUuid),
    /// The answer to a ping.
    Pong,
    /// A result item of a task; `item` is the item's JSON exactly as sent.
    Result {
        /// The task it belongs to.
        task: TaskUuid,
        /// The item, as Runware sent it.
        item: &'a str,
        /// The result's own id (`imageUUID`, `videoUUID`, ...), if it has
        /// one: the same id twice is a duplicate.
        result_id: Option<Cow<'a, str>>,
        /// How it came: pushed, in a `getResponse` answer, or as a step.
        received: Received,
        /// Its `cost` (USD), as it came, within `item`.
        cost: Option<&'a str>,
    },
    /// An async-delivery acknowledgement or a `getResponse` "processing"
    /// item: the task is known to the server but this is not a result.
    Pending {
        /// The task.
        task: TaskUuid,
    },
    /// An error for one task.
    TaskError {
        /// The task.
        task: TaskUuid,
        /// Runware's error.
        error: RunwareError,
    },
    /// An error that names no task (authentication errors are among these).
    /// It is never handed to any task.
    UntargetedError(RunwareError),
    /// Something that cannot be routed: logged and counted, never delivered.
    Unroutable(&'static str),
}

impl PartialEq for Inbound<'_> {
    fn eq(&self, other: &Self) -> bool {
        use Inbound::*;
        match (self, other) {
            (Authenticated(a), Authenticated(b)) => a == b,
            (Pong, Pong) => true,
            (
                Result {
                    task: a,
                    item: x,
                    result_id: i,
                    received: p,
                    ..
                },
                Result {
                    task: b,
                    item: y,
                    result_id: j,
                    received: q,
                    ..
                },
            ) => a == b && x == y && i == j && p == q,
            (Pending { task: a }, Pending { task: b }) => a == b,
            (TaskError { task: a, error: x }, TaskError { task: b, error: y }) => a == b && x == y,
            (UntargetedError(a), UntargetedError(b)) => a == b,
            (Unroutable(a), Unroutable(b)) => a == b,
            _ => false,
        }
    }
}

/// Why a whole frame could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    /// The message is not JSON of a known shape.
    #[error("frame is not a JSON object: {0}")]
    NotJson(String),
    /// The message holds no item.
    #[error("frame has neither data nor errors")]
    Empty,
}

/// Room made for a message's items before reading them, so that a batch
/// does not grow its list a doubling at a time.
pub(super) const ITEMS_AT_FIRST: usize = 16;

/// Most items one upstream message may carry: every result of the largest
/// task the daemon waits on (`MAX_EXPECTED_RESULTS`), with room to spare. A
/// message with more is not read on (a bad message), so what reading one
/// holds stays bounded.
pub const MAX_ITEMS_PER_MESSAGE: usize = 20_000;

/// A data item as the scan of its message read it: its text and, when it
/// is an object whose strings decode, the fields routing needs.
struct DataItem<'a> {
    raw: &'a str,
    head: Option<ItemHead<'a>>,
}

/// The fields of a data item that routing needs, read in the scan of its
/// message: the item's bytes go to the client as they came.
#[derive(Debug, Default)]
struct ItemHead<'a> {
    task_uuid: Option<Cow<'a, str>>,
    task_type: Option<Cow<'a, str>>,
    session: Option<Cow<'a, str>>,
    status: Option<Cow<'a, str>>,
    /// The first `*UUID` field other than taskUUID and the session's.
    result_id: Option<Cow<'a, str>>,
    /// `cost`, as it came (a slice of the item).
    cost: Option<&'a str>,
    pong: bool,
    error: Option<RunwareError>,
    /// Keys other than taskType, taskUUID and status: an item with none is
    /// an acknowledgement, not a result.
    other_keys: usize,
}

/// A string field's text (`None` for any other value); `Err` when a string
/// does not decode, which makes its item unreadable.
fn text_of<'a>(v: &Scanned<'a>) -> Result<Option<Cow<'a, str>>, ()> {
    match v.string {
        Some(s) => s.text().map(Some).ok_or(()),
        None => Ok(None),
    }
}

impl<'a> ItemHead<'a> {
    /// Reads the object at the scan's cursor; `Ok(None)` when a key or a
    /// routing field's string does not decode (the item is then
    /// unroutable, the message read on).
    fn scan(scan: &mut Scan<'a>) -> Result<Option<ItemHead<'a>>, ScanError> {
        let mut head = ItemHead::default();
        let mut readable = true;
        scan.object(|scan, key| {
            let value = scan.value()?;
            let Some(key) = key.text() else {
                readable = false;
                return Ok(());
            };
            let text = || text_of(&value);
            let field = match key.as_ref() {
                "taskUUID" => text().map(|t| head.task_uuid = t),
                "taskType" => text().map(|t| head.task_type = t),
                "status" => text().map(|t| head.status = t),
                other => {
                    head.other_keys += 1;
                    match other {
                        "connectionSessionUUID" => text().map(|t| head.session = t),
                        "cost" => {
                            head.cost = Some(value.raw);
                            Ok(())
                        }
                        "pong" => {
                            head.pong = value.raw == "true";
                            Ok(())
                        }
                        "error" => {
                            head.error = serde_json::from_str(value.raw).unwrap_or(None);
                            Ok(())
                        }
                        k if k.ends_with("UUID") && head.result_id.is_none() => {
                            text().map(|t| head.result_id = t)
                        }
                        _ => Ok(()),
                    }
                }
            };
            readable &= field.is_ok();
            Ok(())
        })?;
        Ok(readable.then_some(head))
    }
}

/// The items of `data` or `errors`; `None` when it is not an array.
type Items<T> = Option<Vec<T>>;

/// Reads the array of items at the scan's cursor (or, when it is no
/// array, steps over it), each with `item`.
fn scan_items<'a, T>(
    scan: &mut Scan<'a>,
    mut item: impl FnMut(&mut Scan<'a>) -> Result<T, ScanError>,
) -> Result<Items<T>, ScanError> {
    if scan.peek() != Some(b'[') {
        scan.value()?;
        return Ok(None);
    }
    let mut items = Vec::with_capacity(ITEMS_AT_FIRST);
    scan.array(|scan| {
        if items.len() == MAX_ITEMS_PER_MESSAGE {
            return Err(ScanError::new(format!(
                "more than {MAX_ITEMS_PER_MESSAGE} items in one message"
            )));
        }
        items.push(item(scan)?);
        Ok(())
    })?;
    Ok(Some(items))
}

fn data_item<'a>(scan: &mut Scan<'a>) -> Result<DataItem<'a>, ScanError> {
    if scan.peek() != Some(b'{') {
        let raw = scan.value()?.raw;
        return Ok(DataItem { raw, head: None });
    }
    let head = scan.record(ItemHead::scan)?;
    Ok(DataItem {
        raw: head.0,
        head: head.1,
    })
}

/// Parses one server message into its items, in order. Pure: a bad item
/// becomes [`Inbound::Unroutable`] and never spoils the rest of the frame.
/// The message is read once, by [`Scan`]: its items and their routing
/// fields are found in the same pass.
pub fn parse_frame(text: &str) -> Result<Vec<Inbound<'_>>, FrameError> {
    let not_json = |e: ScanError| FrameError::NotJson(e.to_string());
    let mut scan = Scan::new(text);
    if scan.peek() != Some(b'{') {
        return Err(FrameError::NotJson("expected a JSON object".to_owned()));
    }
    let mut data: Option<Items<DataItem<'_>>> = None;
    let mut errors: Option<Items<&str>> = None;
    let (mut error, mut error_id, mut error_message) = (None, None, None);
    let mut duplicate = None;
    scan.object(|scan, key| {
        let key = key.text().unwrap_or_default();
        let once = |seen: bool, duplicate: &mut Option<String>| {
            if seen {
                *duplicate = Some(key.to_string());
            }
        };
        match key.as_ref() {
            "data" => {
                once(data.is_some(), &mut duplicate);
                data = Some(scan_items(scan, data_item)?);
            }
            "errors" => {
                once(errors.is_some(), &mut duplicate);
                errors = Some(scan_items(scan, |scan| Ok(scan.value()?.raw))?);
            }
            "error" => {
                once(error.is_some(), &mut duplicate);
                error = Some(scan.value()?.raw);
            }
            "errorId" => {
                once(error_id.is_some(), &mut duplicate);
                error_id = Some(scan.value()?.raw);
            }
            "errorMessage" => {
                once(error_message.is_some(), &mut duplicate);
                error_message = Some(scan.value()?.raw);
            }
            _ => {
                scan.value()?;
            }
        }
        Ok(())
    })
    .map_err(not_json)?;
    scan.end().map_err(not_json)?;
    if let Some(key) = duplicate {
        return Err(FrameError::NotJson(format!("duplicate field `{key}`")));
    }
    let mut out = Vec::new();
    if let Some(data) = data {
        match data {
            Some(items) => out.extend(items.into_iter().map(classify_data_item)),
            None => out.push(Inbound::Unroutable("`data` is not an array")),
        }
    }
    if let Some(errors) = errors {
        match errors {
            Some(items) => out.extend(items.into_iter().map(classify_error_item)),
            None => out.push(Inbound::Unroutable("`errors` is not an array")),
        }
    }
    if let Some(error) = error {
        if error == "true" {
            // The old shape: {"error": true, "errorId": N, "errorMessage": "..."}.
            let value = |raw: Option<&str>| raw.and_then(|r| serde_json::from_str(r).ok());
            let code = match value(error_id) {
                Some(serde_json::Value::String(s)) => s,
                Some(v) => format!("error{v}"),
                None => unknown_code(),
            };
            let message = match value(error_message) {
                Some(serde_json::Value::String(s)) => s,
                _ => String::new(),
            };
            out.push(Inbound::UntargetedError(RunwareError {
                code,
                message,
                ..RunwareError::default()
            }));
        } else if error != "false" && error != "null" {
            out.push(classify_error_item(error));
        }
    }
    if out.is_empty() {
        return Err(FrameError::Empty);
    }
    Ok(out)
}

fn classify_data_item(item: DataItem<'_>) -> Inbound<'_> {
    let DataItem { raw: item, head } = item;
    let Some(head) = head else {
        return Inbound::Unroutable("data item is not an object");
    };
    if head.task_type.as_deref() == Some("authentication") {
        return match head.session {
            Some(s) if is_session_uuid(&s) => Inbound::Authenticated(SessionUuid(s.into_owned())),
            Some(_) => {
                Inbound::Unroutable("authentication item with a malformed connectionSessionUUID")
            }
            None => Inbound::Unroutable("authentication item without connectionSessionUUID"),
        };
    }
    if head.pong || head.task_type.as_deref() == Some("ping") {
        return Inbound::Pong;
    }
    let Some(raw_uuid) = head.task_uuid else {
        return Inbound::Unroutable("data item without taskUUID");
    };
    let Some(task) = TaskUuid::parse_any(&raw_uuid) else {
        return Inbound::Unroutable("data item with a malformed taskUUID");
    };
    match head.status.as_deref() {
        // getResponse items: https://runware.ai/docs/en/utilities/task-responses
        // (`progress` may come with `processing`: still not a result).
        Some("processing") => Inbound::Pending { task },
        Some("error") | Some("failed") => {
            let mut error = head.error.unwrap_or_else(|| RunwareError {
                code: "taskFailed".to_owned(),
                message: "Runware reported the task failed".to_owned(),
                ..RunwareError::default()
            });
            error.task_uuid = Some(task.to_string());
            Inbound::TaskError { task, error }
        }
        _ if head.other_keys == 0 => Inbound::Pending { task },
        status => Inbound::Result {
            task,
            item,
            received: match status {
                None => Received::Pushed,
                Some("success") => Received::Answered,
                Some(step) => Received::Step {
                    last: step == "ready",
                },
            },
            result_id: head.result_id,
            cost: head.cost,
        },
    }
}

/// How a result item came, by its `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Pushed as the task ran: no `status`.
    Pushed,
    /// In a `getResponse` answer: `status: "success"`.
    Answered,
    /// A step of a task that reports its progress in items of their own,
    /// pushed or in an answer: a model upload's `validated`, `downloaded`,
    /// `optimized`, `stored`, then `ready`, which ends it. The client gets
    /// every step; only `ready` counts toward the task's results.
    Step {
        /// The step that completes the task (`ready`).
        last: bool,
    },
}

fn classify_error_item(item: &str) -> Inbound<'_> {
    let Ok(error) = serde_json::from_str::<RunwareError>(item) else {
        return Inbound::Unroutable("error item is not an object");
    };
    match error.task_uuid.as_deref().and_then(TaskUuid::parse_any) {
        Some(task) => Inbound::TaskError { task, error },
        None => Inbound::UntargetedError(error),
    }
}

/// The fields of an image result item
/// (<https://runware.ai/docs/en/image-inference/api-reference>, "Response").
/// Lenient: a field of the wrong type reads as absent. Read in one pass
/// over the item, borrowing from it: a base64 image of megabytes is not
/// copied to be read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageItem<'a> {
    /// Its `imageUUID`.
    pub image_uuid: Cow<'a, str>,
    /// Its `imageURL`, for URL results.
    pub image_url: Option<Cow<'a, str>>,
    /// Its base64 image, borrowed from the item.
    pub image_base64_data: Option<Cow<'a, str>>,
    /// Its data URI, borrowed from the item.
    pub image_data_uri: Option<Cow<'a, str>>,
    /// Its seed.
    pub seed: Option<u64>,
    /// Whether Runware flagged it NSFW.
    pub nsfw_content: Option<bool>,
    /// Its cost, when asked for.
    pub cost: Option<f64>,
    /// The item without `imageBase64Data` and `imageDataURI` (the image
    /// itself, typed above), keys in order: everything else it says.
    pub rest_json: String,
}

impl<'a> ImageItem<'a> {
    /// `None` if `item` is not a JSON object. Read in one scan: the
    /// image is found, not copied, and the rest written out once.
    pub fn parse(item: &'a str) -> Option<ImageItem<'a>> {
        let mut scan = Scan::new(item);
        if scan.peek() != Some(b'{') {
            return None;
        }
        let mut image = ImageItem {
            rest_json: String::with_capacity(256),
            ..ImageItem::default()
        };
        image.rest_json.push('{');
        let (mut uuid, mut url, mut base64, mut uri) = (None, None, None, None);
        let (mut seed, mut nsfw, mut cost) = (None, None, None);
        let mut readable = true;
        scan.object(|scan, key| {
            let value = scan.value()?;
            let Some(name) = key.text() else {
                readable = false;
                return Ok(());
            };
            // The first of a key that comes twice is the one read.
            let first = |slot: &mut Option<Scanned<'a>>| {
                slot.get_or_insert(value);
            };
            match name.as_ref() {
                "imageBase64Data" => {
                    first(&mut base64);
                    return Ok(());
                }
                "imageDataURI" => {
                    first(&mut uri);
                    return Ok(());
                }
                "imageUUID" => first(&mut uuid),
                "imageURL" => first(&mut url),
                "seed" => first(&mut seed),
                "NSFWContent" => first(&mut nsfw),
                "cost" => first(&mut cost),
                _ => {}
            }
            let rest = &mut image.rest_json;
            if rest.len() > 1 {
                rest.push(',');
            }
            match key.escaped {
                false => rest.push_str(key.raw),
                true => rest.push_str(&serde_json::Value::from(name.as_ref()).to_string()),
            }
            rest.push(':');
            rest.push_str(value.raw);
            Ok(())
        })
        .ok()?;
        scan.end().ok()?;
        if !readable {
            return None;
        }
        image.rest_json.push('}');
        let text = |v: Option<Scanned<'a>>| v.and_then(|v| v.text());
        let value = |v: Option<Scanned<'a>>| {
            v.and_then(|v| serde_json::from_str::<serde_json::Value>(v.raw).ok())
        };
        image.image_uuid = text(uuid).unwrap_or_default();
        image.image_url = text(url);
        image.image_base64_data = text(base64);
        image.image_data_uri = text(uri);
        image.seed = value(seed).and_then(|v| v.as_u64());
        image.nsfw_content = value(nsfw).and_then(|v| v.as_bool());
        image.cost = value(cost).and_then(|v| v.as_f64());
        Some(image)
    }
}

/// The fields of a prompt-enhancer result item
/// (<https://runware.ai/docs/en/tools/prompt-enhancer>, "Response"):
/// its text (empty if absent) and cost.
pub fn text_item(item: &str) -> (String, Option<f64>) {
    let v: serde_json::Value = serde_json::from_str(item).unwrap_or_default();
    (
        v.get("text")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        v.get("cost").and_then(serde_json::Value::as_f64),
    )
}

/// A result item's cost in USD: its `cost` field, when it is a number.
pub fn cost_of(cost: &str) -> Option<f64> {
    cost.parse::<f64>()
        .ok()
        .filter(|c| c.is_finite() && *c >= 0.0)
}

/// `item` without its `cost` field, `cost` being that field's value as
/// read from `item` (a slice of it): the rest of the item byte for byte.
/// `None` when `cost` is not within `item`, or its key is not written
/// plainly before it.
pub fn without_cost(item: &str, cost: &str) -> Option<String> {
    let bytes = item.as_bytes();
    let start = (cost.as_ptr() as usize).checked_sub(item.as_ptr() as usize)?;
    let end = start + cost.len();
    if end > item.len() {
        return None;
    }
    let skip_back = |mut i: usize| {
        while i > 0 && bytes[i - 1].is_ascii_whitespace() {
            i -= 1;
        }
        i
    };
    let colon = skip_back(start);
    if colon == 0 || bytes[colon - 1] != b':' {
        return None;
    }
    let key_end = skip_back(colon - 1);
    let key_start = key_end.checked_sub(b"\"cost\"".len())?;
    if &bytes[key_start..key_end] != b"\"cost\"" {
        return None;
    }
    let after = end
        + bytes[end..]
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
    let (cut_from, cut_to) = match bytes.get(after) {
        // Followed by another field: the comma after it goes with it.
        Some(b',') => (key_start, after + 1),
        _ => {
            // The last field: the comma before it goes, if there is one.
            let before = skip_back(key_start);
            match before.checked_sub(1).map(|i| bytes[i]) {
                Some(b',') => (before - 1, end),
                Some(b'{') => (key_start, end),
                _ => return None,
            }
        }
    };
    let mut out = String::with_capacity(item.len() - (cut_to - cut_from));
    out.push_str(&item[..cut_from]);
    out.push_str(&item[cut_to..]);
    Some(out)
}

/// A result item's identity across pushed and polled copies: its JSON
/// without `status: "success"` (which only `getResponse` answers add) and
/// without `cost` (cut from what the daemon keeps for a client that did
/// not ask for it), keys in order. A step's status (`validated`, `ready`) is its content.
pub fn result_fingerprint(item: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match serde_json::from_str::<serde_json::Value>(item) {
        Ok(serde_json::Value::Object(mut m)) => {
            if m.get("status").and_then(serde_json::Value::as_str) == Some("success") {
                m.remove("status");
            }
            // Kept results of a client that did not ask for it have none.
            m.remove("cost");
            serde_json::Value::Object(m).to_string().hash(&mut h);
        }
        _ => item.hash(&mut h),
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ids::examples::{T1, T2, t};

    #[test]
    fn an_items_cost_is_read_and_cut_out_leaving_the_rest_as_it_came() {
        let cut = |item: &str| {
            let f = format!(r#"{{"data":[{item}]}}"#);
            let items = parse_frame(&f).unwrap();
            let Inbound::Result { item, cost, .. } = &items[0] else {
                panic!("not a result")
            };
            let cost = cost.expect("a cost");
            (cost_of(cost), without_cost(item, cost))
        };
        let first = format!(
            r#"{{"cost":0.0013,"taskType":"imageInference","taskUUID":"{T1}","imageUUID":"i"}}"#
        );
        assert_eq!(
            cut(&first),
            (
                Some(0.0013),
                Some(format!(
                    r#"{{"taskType":"imageInference","taskUUID":"{T1}","imageUUID":"i"}}"#
                ))
            )
        );
        let middle = format!(
            r#"{{"taskType":"imageInference", "cost" : 2 , "taskUUID":"{T1}","imageUUID":"i"}}"#
        );
        assert_eq!(
            cut(&middle).1.unwrap(),
            format!(r#"{{"taskType":"imageInference",  "taskUUID":"{T1}","imageUUID":"i"}}"#)
        );
        let last = format!(
            r#"{{"taskType":"imageInference","taskUUID":"{T1}","imageUUID":"i" ,"cost":1e-3 }}"#
        );
        let (usd, rest) = cut(&last);
        assert_eq!(usd, Some(0.001));
        let rest: serde_json::Value = serde_json::from_str(&rest.unwrap()).unwrap();
        assert!(rest.get("cost").is_none() && rest["imageUUID"] == "i");
        // An escaped key is not cut by bytes; a cost that is no number is none.
        let escaped =
            format!(r#"{{"taskType":"t","taskUUID":"{T1}","imageUUID":"i","co\u0073t":1}}"#);
        assert_eq!(cut(&escaped).1, None);
        let text = format!(r#"{{"taskType":"t","taskUUID":"{T1}","imageUUID":"i","cost":"1"}}"#);
        assert_eq!(cut(&text).0, None);
        // A value from elsewhere is not cut.
        let other = String::from("1");
        assert_eq!(without_cost(r#"{"cost":1}"#, &other), None);
    }

    #[test]
    fn authentication_and_pong() {
        let items = parse_frame(
            r#"{"data":[{"taskType":"authentication","connectionSessionUUID":"abc"}]}"#,
        )
        .unwrap();
        assert_eq!(
            items,
            vec![Inbound::Authenticated(SessionUuid("abc".into()))]
        );
        let items = parse_frame(r#"{"data":[{"taskType":"ping","pong":true}]}"#).unwrap();
        assert_eq!(items, vec![Inbound::Pong]);
        // A session UUID is echoed into systemd's status and the state file:
        // a newline, a path or a megabyte of text is not one.
        let long = "a".repeat(65);
        for bad in ["x\nWATCHDOG=trigger", "../x", "", long.as_str()] {
            let frame = serde_json::json!({"data": [{"taskType": "authentication", "connectionSessionUUID": bad}]});
            assert_eq!(
                parse_frame(&frame.to_string()).unwrap(),
                vec![Inbound::Unroutable(
                    "authentication item with a malformed connectionSessionUUID"
                )],
                "{bad:?}"
            );
        }
    }

    #[test]
    fn items_of_several_tasks_in_one_frame_are_routed_each() {
        let frame = format!(
            r#"{{"data":[{{"taskType":"promptEnhance","taskUUID":"{T1}","text":"a"}},
                {{"taskType":"imageInference","taskUUID":"{T2}","imageURL":"u"}},
                {{"taskType":"promptEnhance","taskUUID":"{T1}","text":"b"}}],
               "errors":[{{"code":"invalidWidth","parameter":"width","message":"bad","taskUUID":"{T2}"}}]}}"#
        );
        let items = parse_frame(&frame).unwrap();
        assert_eq!(items.len(), 4);
        match &items[0] {
            Inbound::Result { task, item, .. } => {
                assert_eq!(*task, t(T1));
                assert!(item.contains(r#""text":"a""#));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&items[1], Inbound::Result { task, received: Received::Pushed, result_id: None, .. } if *task == t(T2))
        );
        let with_id =
            format!(r#"{{"data":[{{"taskUUID":"{T1}","imageUUID":"i-1","imageURL":"u"}}]}}"#);
        assert!(
            matches!(&parse_frame(&with_id).unwrap()[0], Inbound::Result { result_id: Some(id), .. } if id == "i-1")
        );
        assert!(
            matches!(&items[2], Inbound::Result { task, item, .. } if *task == t(T1) && item.contains("\"b\""))
        );
        match &items[3] {
            Inbound::TaskError { task, error } => {
                assert_eq!(*task, t(T2));
                assert_eq!(error.code, "invalidWidth");
                assert_eq!(error.parameter.as_deref(), Some("width"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_without_task_uuid_is_nobodys() {
        let items = parse_frame(
            r#"{"errors":[{"code":"invalidApiKey","message":"no","parameter":"apiKey","taskType":"authentication"}]}"#,
        )
        .unwrap();
        match &items[0] {
            Inbound::UntargetedError(e) => assert_eq!(e.code, "invalidApiKey"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn singular_and_old_error_shapes() {
        let f =
            format!(r#"{{"error":{{"code":"timeoutProvider","message":"m","taskUUID":"{T1}"}}}}"#);
        assert!(
            matches!(&parse_frame(&f).unwrap()[0], Inbound::TaskError { task, error } if *task == t(T1) && error.code == "timeoutProvider")
        );
        let items = parse_frame(r#"{"error":true,"errorId":19,"errorMessage":"boom"}"#).unwrap();
        match &items[0] {
            Inbound::UntargetedError(e) => {
                assert_eq!(e.code, "error19");
                assert_eq!(e.message, "boom");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn async_ack_and_get_response_statuses() {
        let ack = format!(r#"{{"data":[{{"taskType":"videoInference","taskUUID":"{T1}"}}]}}"#);
        assert_eq!(
            parse_frame(&ack).unwrap(),
            vec![Inbound::Pending { task: t(T1) }]
        );
        let processing = format!(
            r#"{{"data":[{{"taskType":"getResponse","taskUUID":"{T1}","status":"processing"}}]}}"#
        );
        assert_eq!(
            parse_frame(&processing).unwrap(),
            vec![Inbound::Pending { task: t(T1) }]
        );
        let success = format!(
            r#"{{"data":[{{"taskType":"imageInference","taskUUID":"{T1}","status":"success","imageURL":"u"}}]}}"#
        );
        assert!(matches!(
            &parse_frame(&success).unwrap()[0],
            Inbound::Result {
                received: Received::Answered,
                ..
            }
        ));
        let progress = format!(
            r#"{{"data":[{{"taskType":"videoInference","taskUUID":"{T1}","status":"processing","progress":40}}]}}"#
        );
        assert_eq!(
            parse_frame(&progress).unwrap(),
            vec![Inbound::Pending { task: t(T1) }]
        );
        // A model upload's steps: results, only `ready` the last.
        for (step, last) in [("validated", false), ("stored", false), ("ready", true)] {
            let f = format!(
                r#"{{"data":[{{"taskType":"modelUpload","taskUUID":"{T1}","status":"{step}","air":"a"}}]}}"#
            );
            assert!(
                matches!(&parse_frame(&f).unwrap()[0], Inbound::Result { received: Received::Step { last: l }, .. } if *l == last),
                "{step}"
            );
        }
        // A step's status is part of what it is; success is not.
        assert_ne!(
            result_fingerprint(r#"{"air":"a","status":"validated"}"#),
            result_fingerprint(r#"{"air":"a","status":"stored"}"#)
        );
        assert_eq!(
            result_fingerprint(r#"{"text":"a","status":"success"}"#),
            result_fingerprint(r#"{"text":"a"}"#)
        );
        // Nor is its cost, which a client that did not ask never keeps.
        assert_eq!(
            result_fingerprint(r#"{"text":"a","cost":0.0002,"status":"success"}"#),
            result_fingerprint(r#"{"text":"a"}"#)
        );
        let failed = format!(
            r#"{{"data":[{{"taskType":"imageInference","taskUUID":"{T1}","status":"error","error":{{"code":"invalidModel","message":"m"}}}}]}}"#
        );
        assert!(
            matches!(&parse_frame(&failed).unwrap()[0], Inbound::TaskError { error, .. } if error.code == "invalidModel")
        );
    }

    #[test]
    fn hostile_frames_never_panic_and_never_route() {
        assert!(matches!(
            parse_frame("not json"),
            Err(FrameError::NotJson(_))
        ));
        assert!(matches!(parse_frame("[1,2]"), Err(FrameError::NotJson(_))));
        assert_eq!(parse_frame("{}"), Err(FrameError::Empty));
        let cases = [
            r#"{"data":5}"#,
            r#"{"data":-5.5}"#,
            r#"{"data":true}"#,
            r#"{"data":"[]"}"#,
            r#"{"data":{"a":[1,{"b":2}]}}"#,
            r#"{"data":[5]}"#,
            r#"{"data":[{"taskUUID":7,"text":"x"}]}"#,
            r#"{"data":[{"taskUUID":"not-a-uuid","text":"x"}]}"#,
            r#"{"data":[{"text":"x"}]}"#,
            r#"{"errors":[3]}"#,
            r#"{"errors":{"code":"x"}}"#,
        ];
        for c in cases {
            let items = parse_frame(c).unwrap();
            assert!(
                items.iter().all(|i| matches!(i, Inbound::Unroutable(_))),
                "{c}: {items:?}"
            );
        }
        // A `data` that is no array spoils nothing else of its message.
        let frame = format!(r#"{{"data":{{"x":1}},"errors":[{{"code":"x","taskUUID":"{T1}"}}]}}"#);
        let items = parse_frame(&frame).unwrap();
        assert!(matches!(&items[0], Inbound::Unroutable(_)), "{items:?}");
        assert!(matches!(&items[1], Inbound::TaskError { .. }), "{items:?}");
        // An error with a non-string taskUUID belongs to no task.
        let items = parse_frame(r#"{"errors":[{"code":"x","taskUUID":12}]}"#).unwrap();
        assert!(matches!(&items[0], Inbound::UntargetedError(_)));
    }

    #[test]
    fn escaped_strings_are_read() {
        let f = format!(r#"{{"data":[{{"task\u0055UID":"{T1}","text":"\"q\""}}]}}"#);
        assert!(
            matches!(&parse_frame(&f).unwrap()[0], Inbound::Result { task, .. } if *task == t(T1))
        );
    }

    /// An image item is read in one pass: a base64 image is borrowed, not
    /// copied; everything but the image stays in `rest_json`, in order.
    #[test]
    fn an_image_item_borrows_its_image_and_keeps_the_rest() {
        let item = r#"{"taskType":"imageInference","imageUUID":"u1","imageBase64Data":"QUJD","seed":7,"NSFWContent":false,"cost":0.5,"x":{"y":[1]}}"#;
        let image = ImageItem::parse(item).unwrap();
        assert!(matches!(
            image.image_base64_data,
            Some(Cow::Borrowed("QUJD"))
        ));
        assert_eq!(image.image_uuid, "u1");
        assert_eq!(
            (image.seed, image.nsfw_content, image.cost),
            (Some(7), Some(false), Some(0.5))
        );
        assert_eq!(
            image.rest_json,
            r#"{"taskType":"imageInference","imageUUID":"u1","seed":7,"NSFWContent":false,"cost":0.5,"x":{"y":[1]}}"#
        );
        // Escapes are read; wrong types read as absent; not an object: None.
        let odd = ImageItem::parse(r#"{"imageURL":"a\/b","seed":"7","imageDataURI":1}"#).unwrap();
        assert_eq!(odd.image_url.as_deref(), Some("a/b"));
        assert_eq!((odd.seed, odd.image_data_uri), (None, None));
        assert_eq!(odd.rest_json, r#"{"imageURL":"a\/b","seed":"7"}"#);
        assert!(ImageItem::parse("[1]").is_none());
    }
}
