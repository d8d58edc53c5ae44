//! One shard thread: feeds its engine and carries out the effects.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use backchannel_sync::{Effect, Engine, Input};

use super::EditTickets;
use super::io::{FlusherHandle, IoPool, WriteJob};
use super::registry::Registry;
use crate::auth::now_millis;
use crate::community::{CommunityRules, Summary, SyncUser};

/// How often an idle shard wakes to evict idle documents.
const TICK: Duration = Duration::from_secs(1);

pub enum ShardCommand {
    Input(Input<SyncUser>),
    Stop,
}

pub struct ShardContext {
    /// This shard's own inbox, for answers from the IO pool and the flusher.
    pub inbox: mpsc::Sender<ShardCommand>,
    pub registry: Arc<Registry>,
    pub flusher: FlusherHandle,
    pub pool: IoPool,
    pub tickets: Arc<EditTickets>,
    pub summaries: super::SummarySink,
}

pub fn run(
    mut engine: Engine<CommunityRules>,
    inbox: mpsc::Receiver<ShardCommand>,
    context: ShardContext,
) {
    loop {
        let input = match inbox.recv_timeout(TICK) {
            Ok(ShardCommand::Input(input)) => input,
            Ok(ShardCommand::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => Input::Tick,
        };
        for effect in engine.handle(input, now_millis()) {
            carry_out(effect, &context);
        }
    }
}

fn carry_out(effect: Effect<Summary>, context: &ShardContext) {
    match effect {
        Effect::Send {
            connection,
            message,
        } => context.registry.send(connection, message.encode().into()),
        Effect::SendFrame { connection, frame } => context.registry.send(connection, frame),
        Effect::Close { connection, reason } => {
            tracing::info!(connection = connection.0, %reason, "closing sync connection");
            context.registry.close(connection, reason);
        }
        Effect::Load { document_id } => context.pool.load(document_id, context.inbox.clone()),
        Effect::Write { write, writes } => context.flusher.submit(WriteJob {
            writes,
            done: write.map(|id| (id, context.inbox.clone())),
        }),
        Effect::Compact { document_id } => context.pool.compact(document_id),
        Effect::DocumentChanged {
            document_id,
            user_id,
            changes,
        } => {
            tracing::debug!(document = %document_id, user = %user_id, changes = changes.len(), "document changed");
        }
        Effect::Summary {
            document_id,
            summary,
        } => {
            (context.summaries)(document_id, summary);
        }
        Effect::EditDone { ticket, result } => {
            if let Err(reason) = &result {
                tracing::warn!(ticket, %reason, "a server edit failed");
            }
            context.tickets.finish(ticket, result);
        }
    }
}
