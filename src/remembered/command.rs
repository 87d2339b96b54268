//! `keytap approvals [clear]`: what the running agent remembers, over `keytap-approvals@keytap.dev`.

use crate::remembered::{Reply, EXT_APPROVALS};
use crate::cli::{ApprovalsAction, ApprovalsArgs};
use crate::client;
use crate::command::AppError;
use crate::text;

pub fn run(args: ApprovalsArgs) -> Result<(), AppError> {
    let (mut agent, _) = client::keytap_agent().ok_or_else(|| {
        AppError::Message(
            "`keytap approvals` works through the running keytap agent, and SSH_AUTH_SOCK does not point at one; start it with `eval $(keytap agent)`".into(),
        )
    })?;
    let clear = matches!(args.action, Some(ApprovalsAction::Clear));
    let mut details = Vec::new();
    ssh_encoding::Encode::encode(&(if clear { "clear" } else { "list" }), &mut details).expect("encoding to a vec");
    let answer = agent.extension(EXT_APPROVALS, details)?;
    let reply: Reply = serde_json::from_slice(&answer).map_err(|e| AppError::Message(format!("unexpected answer from the agent: {e}")))?;
    if let Some(error) = reply.error {
        return Err(AppError::Message(error));
    }
    if clear {
        println!("Forgot {} remembered approval{}.", reply.cleared, if reply.cleared == 1 { "" } else { "s" });
        return Ok(());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reply.approvals).expect("serialises"));
        return Ok(());
    }
    if reply.approvals.is_empty() {
        println!("No approvals are remembered.");
        return Ok(());
    }
    for a in &reply.approvals {
        let destination = if a.destination.is_empty() { String::new() } else { format!(" to {}", a.destination) };
        println!("{}  {}  {}{}  expires in {}s", text::escape(&a.program), a.key, text::escape(&a.purpose), destination, a.expires_in_secs);
    }
    Ok(())
}
