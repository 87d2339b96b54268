//! Confirmations, one at a time, on their own thread.
//!
//! An askpass dialog can wait for minutes. Were each one a tokio blocking task, a flood of
//! requests needing confirmation (any forwarded peer can send them) would fill the blocking
//! pool, and the peer lookups and audit writes every connection needs would queue behind
//! them. So one dedicated thread asks, one question at a time (the user can answer only one
//! anyway), and at most [`QUEUE`] more wait; beyond that a request is refused at once. A
//! question whose requester went away before its turn is never shown.

use std::sync::mpsc;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::prompt::Prompter;

/// Questions that may wait behind the one on screen.
pub const QUEUE: usize = 8;

struct Question {
    message: String,
    answer: oneshot::Sender<bool>,
}

/// Why a confirmation was not asked.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfirmError {
    #[error("too many confirmations are already waiting ({QUEUE} queued behind the one on screen); answer those first, then retry")]
    Busy,
    #[error("the confirmation thread has stopped; restart keytap")]
    Stopped,
}

/// The queue to the confirmation thread.
pub struct Confirmer {
    queue: mpsc::SyncSender<Question>,
}

impl Confirmer {
    pub fn spawn(prompter: Arc<dyn Prompter>) -> Confirmer {
        let (queue, questions) = mpsc::sync_channel::<Question>(QUEUE);
        std::thread::Builder::new()
            .name("confirm".into())
            .spawn(move || {
                for question in questions {
                    if question.answer.is_closed() {
                        continue; // the client went away while waiting for its turn
                    }
                    let yes = prompter.confirm(&question.message);
                    let _ = question.answer.send(yes);
                }
            })
            .expect("spawning the confirmation thread");
        Confirmer { queue }
    }

    /// Ask the user; waits (without blocking the event loop) for the answer.
    pub async fn ask(&self, message: String) -> Result<bool, ConfirmError> {
        let (answer, reply) = oneshot::channel();
        self.queue.try_send(Question { message, answer }).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => ConfirmError::Busy,
            mpsc::TrySendError::Disconnected(_) => ConfirmError::Stopped,
        })?;
        reply.await.map_err(|_| ConfirmError::Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::{PinRequest, PromptError};
    use crate::token::Pin;
    use std::sync::Mutex;

    /// Holds every confirmation until released; records what it was asked.
    struct Gate {
        open: Mutex<bool>,
        wake: std::sync::Condvar,
        asked: Mutex<Vec<String>>,
    }

    impl Prompter for Gate {
        fn pin(&self, _: &PinRequest) -> Result<Option<Pin>, PromptError> {
            Ok(None)
        }
        fn confirm(&self, message: &str) -> bool {
            self.asked.lock().unwrap().push(message.to_string());
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.wake.wait(open).unwrap();
            }
            message.ends_with("yes")
        }
        fn notify(&self, _: &str) {}
    }

    #[tokio::test]
    async fn one_question_at_a_time_a_bounded_queue_and_abandoned_questions_skipped() {
        let gate = Arc::new(Gate { open: Mutex::new(false), wake: Default::default(), asked: Mutex::new(Vec::new()) });
        let confirmer = Arc::new(Confirmer::spawn(gate.clone()));
        // The first question goes on screen; wait until it is there.
        let first = tokio::spawn({
            let c = confirmer.clone();
            async move { c.ask("first yes".into()).await }
        });
        while gate.asked.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        // QUEUE more wait; one of them is abandoned by its requester.
        let mut waiting = Vec::new();
        for i in 0..QUEUE {
            let c = confirmer.clone();
            waiting.push(tokio::spawn(async move { c.ask(format!("queued {i} no")).await }));
        }
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        // Beyond the queue: refused at once, without a prompt.
        assert_eq!(confirmer.ask("one too many".into()).await, Err(ConfirmError::Busy));
        let abandoned = waiting.remove(0);
        abandoned.abort();
        assert!(abandoned.await.unwrap_err().is_cancelled());
        *gate.open.lock().unwrap() = true;
        gate.wake.notify_all();
        assert_eq!(first.await.unwrap(), Ok(true));
        for w in waiting {
            assert_eq!(w.await.unwrap(), Ok(false));
        }
        let asked = gate.asked.lock().unwrap().clone();
        assert_eq!(asked.len(), QUEUE, "{asked:?}");
        assert!(!asked.iter().any(|m| m == "queued 0 no" || m == "one too many"), "{asked:?}");
    }
}
