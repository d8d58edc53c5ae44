//! One shard thread: feeds its engine and carries out the effects.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use backchannel_sync::{Effect, Engine, Input};

use super::EditTickets;
use super::io::{FlusherHandle, IoPool, WriteJob};
use super::registry::Registry;
use crate::auth::now_millis;
use crate::community::{CommunityRules, Summary, SyncUser};

/// How often an idle shard wakes to evict idle documents.
const TICK: Duration = Duration::from_secs(1);

/// How long a stopping shard waits for its loads and writes in flight.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

pub enum ShardCommand {
    Input(Input<SyncUser>),
    /// A client's message, holding its bytes against the connection's
    /// inbound budget until the engine has taken it in.
    Routed(Input<SyncUser>, InboundPermit),
    Stop,
}

/// Bytes of a connection's inbound budget, given back when dropped.
pub type InboundPermit = tokio::sync::OwnedSemaphorePermit;

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
    let mut in_flight = InFlight::default();
    let mut stopping: Option<Instant> = None;
    loop {
        if let Some(since) = stopping {
            if in_flight.is_empty() {
                return;
            }
            if since.elapsed() > DRAIN_LIMIT {
                tracing::warn!(
                    loads = in_flight.loads,
                    writes = in_flight.writes,
                    "a stopping shard gave up waiting for its IO"
                );
                return;
            }
        }
        let mut permit = None;
        let input = match inbox.recv_timeout(TICK) {
            Ok(ShardCommand::Input(input)) => input,
            Ok(ShardCommand::Routed(input, held)) => {
                permit = Some(held);
                input
            }
            // Edits and messages queued behind a load or a write would be
            // lost: keep going until every load and write is answered.
            Ok(ShardCommand::Stop) => {
                stopping.get_or_insert_with(Instant::now);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => Input::Tick,
        };
        in_flight.answered(&input);
        for effect in engine.handle(input, now_millis()) {
            in_flight.issued(&effect);
            carry_out(effect, &context);
        }
        drop(permit);
    }
}

/// Loads and acknowledged writes issued and not yet answered.
#[derive(Default)]
struct InFlight {
    loads: usize,
    writes: usize,
}

impl InFlight {
    fn is_empty(&self) -> bool {
        self.loads == 0 && self.writes == 0
    }

    fn issued(&mut self, effect: &Effect<Summary>) {
        match effect {
            Effect::Load { .. } => self.loads += 1,
            Effect::Write { write: Some(_), .. } => self.writes += 1,
            _ => {}
        }
    }

    fn answered(&mut self, input: &Input<SyncUser>) {
        match input {
            Input::Loaded { .. } => self.loads = self.loads.saturating_sub(1),
            Input::Written { .. } | Input::WriteFailed { .. } => {
                self.writes = self.writes.saturating_sub(1);
            }
            _ => {}
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
