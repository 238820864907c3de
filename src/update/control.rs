//! Operator commands for the engine (from the admin listener's POST
//! endpoints and `liveroll ctl`): each is queued to the supervisor's loop,
//! which runs it between updates and answers with what it did.

use tokio::sync::{mpsc, oneshot};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Republish the previous child if it is still warm, else start the
    /// previous ID.
    Rollback,
    /// Stop automatic updates (interval); a crashed child is still replaced.
    Pause,
    Resume,
    /// End the bake window now: the new child is kept, the previous retired.
    Promote,
    /// A forced update, as SIGHUP.
    Rollover,
    /// Hand over to a new liveroll process started from the binary at the
    /// same path (SIGUSR2); the children keep running.
    Upgrade,
}

impl Command {
    pub fn parse(name: &str) -> Option<Command> {
        Some(match name {
            "rollback" => Command::Rollback,
            "pause" => Command::Pause,
            "resume" => Command::Resume,
            "promote" => Command::Promote,
            "rollover" => Command::Rollover,
            "upgrade" => Command::Upgrade,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Rollback => "rollback",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Promote => "promote",
            Command::Rollover => "rollover",
            Command::Upgrade => "upgrade",
        }
    }
}

/// What the engine did, or why it could not.
pub type Answer = Result<String, String>;

pub struct Request {
    pub command: Command,
    pub reply: oneshot::Sender<Answer>,
}

/// The sending side, shared by the admin listener.
#[derive(Clone)]
pub struct Control(mpsc::UnboundedSender<Request>);

impl Control {
    pub fn channel() -> (Control, mpsc::UnboundedReceiver<Request>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Control(tx), rx)
    }

    /// Queues `command` and waits for the engine's answer.
    pub async fn send(&self, command: Command) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.0
            .send(Request { command, reply })
            .map_err(|_| "liveroll is shutting down".to_string())?;
        answer
            .await
            .unwrap_or_else(|_| Err("liveroll is shutting down".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for command in [
            Command::Rollback,
            Command::Pause,
            Command::Resume,
            Command::Promote,
            Command::Rollover,
            Command::Upgrade,
        ] {
            assert_eq!(Command::parse(command.as_str()), Some(command));
        }
        assert_eq!(Command::parse("reboot"), None);
    }

    #[tokio::test]
    async fn a_request_gets_the_engines_answer() {
        let (control, mut requests) = Control::channel();
        let engine = tokio::spawn(async move {
            let request = requests.recv().await.unwrap();
            let _ = request
                .reply
                .send(Ok(format!("did {}", request.command.as_str())));
        });
        assert_eq!(control.send(Command::Pause).await, Ok("did pause".into()));
        engine.await.unwrap();
        // With the engine gone, the answer says so.
        assert!(control.send(Command::Pause).await.is_err());
    }
}
