//! The decision about an item arriving for a task: a result new to the task,
//! one it already has (pushed again, or repeated in an answer), one of a
//! task no longer here or already ended, an answer to a question no longer
//! asked; an error that fails the task, or one the task's lifecycle must
//! weigh first. Pure functions of what the table knows of the task and of
//! the item; the table only applies the verdict ([`super::routing`]).

use super::*;

/// What the decision reads of the task an item names.
#[derive(Debug, Clone, Copy)]
pub(super) struct TaskView<'a> {
    /// The task has no outcome yet.
    pub(super) in_flight: bool,
    /// Its results come by `getResponse` answers now.
    pub(super) polling: bool,
    /// Which results it took, once it is polled.
    pub(super) matching: Option<&'a Matching>,
    /// The ids of its results so far.
    pub(super) result_ids: &'a [Box<str>],
    /// The steps it took so far, if its type reports steps at all.
    pub(super) steps: Option<u32>,
}

/// Most steps one task may report: a model upload has four; anything past
/// this is an upstream that misbehaves, and each step is held until the
/// task's results go.
pub(super) const MAX_STEPS_PER_TASK: u32 = 64;

/// Whether a task type reports steps (items of their own before its
/// result): a model upload does, and a type the daemon does not know may;
/// the others never do.
pub(super) fn reports_steps(label: &str) -> bool {
    matches!(label, "modelUpload" | "other")
}

impl Task {
    /// What the arrival decisions read of this task.
    pub(super) fn view(&self) -> TaskView<'_> {
        TaskView {
            in_flight: self.in_flight(),
            polling: self.delivery.is_polling(),
            matching: self.matching.as_deref(),
            result_ids: &self.result_ids,
            steps: reports_steps(self.label).then_some(self.steps),
        }
    }
}

/// A result item as the decision reads it.
#[derive(Debug, Clone, Copy)]
pub(super) struct ArrivingResult<'a> {
    /// How it came: pushed, in an answer, or a step.
    pub(super) received: Received,
    /// The item as Runware sent it.
    pub(super) text: &'a str,
    /// Its id (`imageUUID`, ...), if it has one.
    pub(super) result_id: Option<&'a str>,
    /// The number of the upstream message it came in.
    pub(super) message: u64,
}

/// What the table does with a result item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ResultVerdict {
    /// No task of its taskUUID is in the table: dropped, counted late.
    NoTask,
    /// Its task ended: dropped, counted a duplicate.
    AfterEnd,
    /// An answer to a question no longer asked (the task was sent again
    /// meanwhile): dropped; its pushes bring the results.
    StaleAnswer,
    /// A result the task has already (matched by its fingerprint): recorded
    /// as seen, dropped, and counted a duplicate when it was pushed.
    Repeat { polled: bool, fingerprint: u64 },
    /// A new result whose id the task has already: recorded as seen,
    /// dropped, counted a duplicate.
    DuplicateId {
        polled: bool,
        fingerprint: Option<u64>,
    },
    /// A step (an item with a status of its own) for a task whose type
    /// reports none, or past [`MAX_STEPS_PER_TASK`]: dropped, counted a bad
    /// item.
    BadStep,
    /// A new result: the task takes it.
    Take {
        polled: bool,
        fingerprint: Option<u64>,
    },
}

impl ResultVerdict {
    /// For an item that reaches the task (a repeat, a duplicate id or a new
    /// result): whether it came in a `getResponse` answer that still counts
    /// (the table moves the task's polling on), and its fingerprint for the
    /// task's matching, once it is polled.
    pub(super) fn matched(&self) -> Option<(bool, Option<u64>)> {
        match *self {
            ResultVerdict::Repeat {
                polled,
                fingerprint,
            } => Some((polled, Some(fingerprint))),
            ResultVerdict::DuplicateId {
                polled,
                fingerprint,
            }
            | ResultVerdict::Take {
                polled,
                fingerprint,
            } => Some((polled, fingerprint)),
            ResultVerdict::NoTask
            | ResultVerdict::AfterEnd
            | ResultVerdict::StaleAnswer
            | ResultVerdict::BadStep => None,
        }
    }

    /// Whether the item is part of a `getResponse` answer that still counts.
    #[cfg(test)]
    fn polled(&self) -> bool {
        self.matched().is_some_and(|(polled, _)| polled)
    }
}

/// Decides what becomes of a result item for `task` (`None`: no such task).
pub(super) fn judge_result(
    task: Option<&TaskView<'_>>,
    item: &ArrivingResult<'_>,
) -> ResultVerdict {
    let Some(task) = task else {
        return ResultVerdict::NoTask;
    };
    if !task.in_flight {
        return ResultVerdict::AfterEnd;
    }
    let is_step = item.received == (Received::Step { last: false });
    if is_step && task.steps.is_none() {
        return ResultVerdict::BadStep;
    }
    // A step says nothing of how it came: while the task is polled, it is
    // part of an answer (which repeats the steps so far).
    let polled = match item.received {
        Received::Pushed => false,
        Received::Answered => true,
        Received::Step { .. } => task.polling,
    };
    if polled && !task.polling {
        return ResultVerdict::StaleAnswer;
    }
    let fingerprint = task.matching.map(|m| {
        let fingerprint = protocol::result_fingerprint(item.text);
        (m, fingerprint)
    });
    if let Some((m, fingerprint)) = fingerprint {
        if !m.is_new(fingerprint, polled, item.message) {
            return ResultVerdict::Repeat {
                polled,
                fingerprint,
            };
        }
    }
    let fingerprint = fingerprint.map(|(_, f)| f);
    match item.result_id {
        Some(id) if task.result_ids.iter().any(|seen| &**seen == id) => {
            ResultVerdict::DuplicateId {
                polled,
                fingerprint,
            }
        }
        _ if is_step && task.steps >= Some(MAX_STEPS_PER_TASK) => ResultVerdict::BadStep,
        _ => ResultVerdict::Take {
            polled,
            fingerprint,
        },
    }
}

/// What the table does with a Runware error about a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ErrorVerdict {
    /// No task of its taskUUID is in the table: dropped, and counted late
    /// unless it is a conflict (the answer to a resend of a task that ended).
    NoTask { counted: bool },
    /// Its task ended: ignored.
    AfterEnd,
    /// A `getResponse` question's error: Runware does not know the task.
    /// The lifecycle decides (send it, or fail a followed task).
    Unknown,
    /// `conflictTaskUUID`: the lifecycle decides (a resend Runware has is
    /// polled; a first send fails).
    Conflict,
    /// The task fails with the error.
    Fail,
}

/// Decides what becomes of an error for `task_in_flight` (`None`: no such
/// task), of class `class`, about a `getResponse` question or not.
pub(super) fn judge_error(
    task_in_flight: Option<bool>,
    class: ErrorClass,
    about_get_response: bool,
) -> ErrorVerdict {
    match task_in_flight {
        None => ErrorVerdict::NoTask {
            counted: class != ErrorClass::Conflict,
        },
        Some(false) => ErrorVerdict::AfterEnd,
        Some(true) if about_get_response => ErrorVerdict::Unknown,
        Some(true) if class == ErrorClass::Conflict => ErrorVerdict::Conflict,
        Some(true) => ErrorVerdict::Fail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(
        polling: bool,
        matching: Option<&'a Matching>,
        ids: &'a [Box<str>],
    ) -> TaskView<'a> {
        TaskView {
            in_flight: true,
            polling,
            matching,
            result_ids: ids,
            steps: Some(0),
        }
    }

    fn item<'a>(received: Received, text: &'a str, id: Option<&'a str>) -> ArrivingResult<'a> {
        ArrivingResult {
            received,
            text,
            result_id: id,
            message: 1,
        }
    }

    #[test]
    fn a_result_for_no_task_or_an_ended_one_is_dropped() {
        let pushed = item(Received::Pushed, "{}", None);
        assert_eq!(judge_result(None, &pushed), ResultVerdict::NoTask);
        let ended = TaskView {
            in_flight: false,
            ..view(false, None, &[])
        };
        assert_eq!(judge_result(Some(&ended), &pushed), ResultVerdict::AfterEnd);
    }

    #[test]
    fn an_answer_counts_only_while_the_task_is_polled() {
        let answered = item(Received::Answered, "{}", None);
        let pushed_mode = view(false, None, &[]);
        assert_eq!(
            judge_result(Some(&pushed_mode), &answered),
            ResultVerdict::StaleAnswer
        );
        // A step is part of an answer only while the task is polled.
        let step = item(Received::Step { last: false }, "{}", None);
        let verdict = judge_result(Some(&pushed_mode), &step);
        assert!(!verdict.polled(), "{verdict:?}");
        let matching = Matching::new([]);
        let polling = view(true, Some(&matching), &[]);
        assert!(judge_result(Some(&polling), &step).polled());
        assert!(judge_result(Some(&polling), &answered).polled());
    }

    #[test]
    fn steps_only_for_types_that_report_them_and_only_so_many() {
        let step = item(Received::Step { last: false }, r#"{"status":"x"}"#, None);
        let ready = item(Received::Step { last: true }, r#"{"status":"ready"}"#, None);
        let no_steps = TaskView {
            steps: None,
            ..view(false, None, &[])
        };
        assert_eq!(judge_result(Some(&no_steps), &step), ResultVerdict::BadStep);
        assert!(matches!(
            judge_result(Some(&view(false, None, &[])), &step),
            ResultVerdict::Take { .. }
        ));
        let full = TaskView {
            steps: Some(MAX_STEPS_PER_TASK),
            ..view(false, None, &[])
        };
        assert_eq!(judge_result(Some(&full), &step), ResultVerdict::BadStep);
        // The step that completes a task is its result, whatever came before.
        assert!(matches!(
            judge_result(Some(&full), &ready),
            ResultVerdict::Take { .. }
        ));
        assert!(reports_steps("modelUpload") && reports_steps("other"));
        assert!(!reports_steps("imageInference") && !reports_steps("promptEnhance"));
    }

    #[test]
    fn a_result_taken_before_is_a_repeat_and_a_known_id_a_duplicate() {
        let text = r#"{"imageUUID":"a"}"#;
        let fingerprint = protocol::result_fingerprint(text);
        // Taken from the answer in message 1.
        let mut matching = Matching::new([]);
        assert!(matching.take(fingerprint, true, 1));
        let ids: [Box<str>; 1] = ["a".into()];
        let polling = view(true, Some(&matching), &ids);
        // Pushed after the answer brought it: a repeat.
        assert_eq!(
            judge_result(Some(&polling), &item(Received::Pushed, text, Some("a"))),
            ResultVerdict::Repeat {
                polled: false,
                fingerprint
            }
        );
        // The next answer lists it again: a repeat too.
        let again = ArrivingResult {
            message: 2,
            ..item(Received::Answered, text, Some("a"))
        };
        assert_eq!(
            judge_result(Some(&polling), &again),
            ResultVerdict::Repeat {
                polled: true,
                fingerprint
            }
        );
        // Pushed twice, the same text is two results (a prompt may be enhanced
        // to the same text twice), but not under the same id.
        assert_eq!(
            judge_result(
                Some(&view(true, Some(&Matching::new([fingerprint])), &ids)),
                &item(Received::Pushed, text, Some("a"))
            ),
            ResultVerdict::DuplicateId {
                polled: false,
                fingerprint: Some(fingerprint)
            }
        );
        // New to the matching, but its id is known: a duplicate from Runware.
        let pushed_mode = view(false, None, &ids);
        assert_eq!(
            judge_result(Some(&pushed_mode), &item(Received::Pushed, text, Some("a"))),
            ResultVerdict::DuplicateId {
                polled: false,
                fingerprint: None
            }
        );
        assert_eq!(
            judge_result(Some(&pushed_mode), &item(Received::Pushed, text, Some("b"))),
            ResultVerdict::Take {
                polled: false,
                fingerprint: None
            }
        );
    }

    #[test]
    fn errors_fail_a_task_in_flight_unless_the_lifecycle_must_weigh_them() {
        use ErrorClass::*;
        assert_eq!(
            judge_error(None, Other, false),
            ErrorVerdict::NoTask { counted: true }
        );
        assert_eq!(
            judge_error(None, Conflict, false),
            ErrorVerdict::NoTask { counted: false }
        );
        assert_eq!(
            judge_error(Some(false), Other, false),
            ErrorVerdict::AfterEnd
        );
        assert_eq!(judge_error(Some(true), Other, true), ErrorVerdict::Unknown);
        assert_eq!(
            judge_error(Some(true), Conflict, false),
            ErrorVerdict::Conflict
        );
        for class in [
            InvalidArgument,
            NoCredit,
            RateLimited,
            AuthRejected,
            Timeout,
            Other,
        ] {
            assert_eq!(judge_error(Some(true), class, false), ErrorVerdict::Fail);
        }
    }
}
