//! Reads: a small pool of read-only connections used on blocking threads.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use futures_util::Stream;
use serde_json::json;
use sessionizer_formats::{
    EventRow, FileFormat, SessionRow, StoredEventRow, session_writer_to, stored_event_writer_to,
};
use sessionizer_store::{Store, StoreError, StoredSession};
use tokio::sync::{Semaphore, mpsc};

use crate::error::ApiError;
use crate::limits::MAX_CONCURRENT_READS;
use crate::writer::AppliedWatch;

type ExportChunk = Result<Bytes, std::io::Error>;

/// Chunks of an export in flight between the database thread and the socket.
const EXPORT_QUEUE_CHUNKS: usize = 16;
/// Bytes per export chunk.
const EXPORT_CHUNK_BYTES: usize = 64 * 1024;

#[derive(Debug)]
pub(crate) struct Readers {
    dir: PathBuf,
    pool: Mutex<Vec<Store>>,
    /// One per read in progress, exports included until their last byte.
    permits: Arc<Semaphore>,
    /// The embedded store's writer: reads wait for the events acknowledged
    /// before them to be applied.
    applied: Option<AppliedWatch>,
}

impl Readers {
    pub(crate) fn new(dir: PathBuf, applied: Option<AppliedWatch>) -> Readers {
        Readers { dir, pool: Mutex::new(Vec::new()), permits: Arc::new(Semaphore::new(MAX_CONCURRENT_READS)), applied }
    }

    /// A read permit, once the events acknowledged so far are applied.
    async fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        if let Some(applied) = &self.applied {
            applied.caught_up().await?;
        }
        self.permits.clone().acquire_owned().await.map_err(|_| ApiError::Unavailable("shutting down".into()))
    }

    fn take(&self) -> Result<Store, StoreError> {
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match pooled {
            Some(store) => Ok(store),
            None => Store::open_reader(&self.dir),
        }
    }

    fn give_back(&self, store: Store) {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).push(store);
    }

    /// Runs `work` with a connection on a blocking thread.
    pub(crate) async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Store) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let _permit = self.permit().await?;
        let readers = self.clone();
        tokio::task::spawn_blocking(move || {
            let store = readers.take()?;
            let result = work(&store);
            readers.give_back(store);
            result
        })
        .await
        .map_err(|e| ApiError::Internal(format!("read task failed: {e}")))?
    }

    /// Streams the events of `[from_ms, to_ms)` with their sessions.
    pub(crate) async fn export_events(
        self: &Arc<Self>,
        project: i64,
        from_ms: i64,
        to_ms: i64,
        format: FileFormat,
    ) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>> + use<>, ApiError> {
        self.export(move |store, out| {
            let project = crate::query::project_of(store, project).map_err(|e| e.to_string())?;
            let (_, classifier) = project.settings.compile().map_err(|e| e.to_string())?;
            let classify = |event_type: &str, passive: bool| classifier.classify(event_type, passive);
            let mut sink = stored_event_writer_to(format, out).map_err(|e| e.to_string())?;
            store
                .export_events(project.id, from_ms, to_ms, &classify, &mut |stored, session| {
                    write_exported_event(sink.as_mut(), &stored.event, session)
                        .map_err(|e| StoreError::Sqlite(format!("export stopped: {e}")))
                })
                .map_err(|e| e.to_string())?;
            sink.finish().map_err(|e| e.to_string())
        })
        .await
    }

    /// Streams the sessions starting in `[from_ms, to_ms)`, by start.
    pub(crate) async fn export_sessions(
        self: &Arc<Self>,
        project: i64,
        from_ms: i64,
        to_ms: i64,
        format: FileFormat,
    ) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>> + use<>, ApiError> {
        self.export(move |store, out| {
            let mut sink = session_writer_to(format, out).map_err(|e| e.to_string())?;
            store
                .export_sessions(project, from_ms, to_ms, &mut |session| {
                    write_stored_session(sink.as_mut(), session)
                        .map_err(|e| StoreError::Sqlite(format!("export stopped: {e}")))
                })
                .map_err(|e| e.to_string())?;
            sink.finish().map_err(|e| e.to_string())
        })
        .await
    }

    /// Runs `write` on a blocking thread with a connection and a writer into
    /// the response body; the body is the stream returned. The read permit is
    /// held until the last byte.
    async fn export<W>(self: &Arc<Self>, write: W) -> Result<impl Stream<Item = ExportChunk> + use<W>, ApiError>
    where
        W: FnOnce(&Store, Box<dyn Write + Send>) -> Result<(), String> + Send + 'static,
    {
        let permit = self.permit().await?;
        let readers = self.clone();
        Ok(export_stream(permit, move |out| {
            let store = readers.take().map_err(|e| e.to_string())?;
            let written = write(&store, out);
            readers.give_back(store);
            written
        }))
    }
}

/// Runs `write` on a blocking thread with a writer into the response body,
/// which is the stream returned; `permit` is held until the last byte. An
/// error part way ends the body with an error (the client sees a cut
/// transfer, not a short file that looks whole).
pub(crate) fn export_stream<W>(
    permit: tokio::sync::OwnedSemaphorePermit,
    write: W,
) -> impl Stream<Item = ExportChunk> + use<W>
where
    W: FnOnce(Box<dyn Write + Send>) -> Result<(), String> + Send + 'static,
{
    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(EXPORT_QUEUE_CHUNKS);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let errors = sender.clone();
        let out = ChannelWriter { sender, buffer: Vec::with_capacity(EXPORT_CHUNK_BYTES) };
        if let Err(error) = write(Box::new(out)) {
            tracing::warn!(%error, "export failed part way");
            drop(errors.blocking_send(Err(std::io::Error::other(error))));
        }
    });
    futures_util::stream::unfold(
        receiver,
        |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) },
    )
}

/// One exported event as an output row.
pub(crate) fn write_exported_event(
    sink: &mut dyn sessionizer_formats::StoredEventSink,
    event: &sessionizer_store::NewEvent,
    session: Option<(i64, uuid::Uuid)>,
) -> Result<(), sessionizer_formats::WriteError> {
    let mut uid_buffer = uuid::Uuid::encode_buffer();
    sink.write(&StoredEventRow {
        event: EventRow {
            user_id: event.user_id.as_deref(),
            device_id: event.device_id.as_deref(),
            event_type: &event.event_type,
            time_ms: event.time_ms,
            insert_id: event.insert_id.as_deref(),
            page: event.page.as_deref(),
            passive: event.passive,
            session_id: session.map(|(id, _)| id),
            session_uid: session.map(|(_, uid)| &*uid.hyphenated().encode_lower(&mut uid_buffer)),
        },
        platform: event.platform.as_deref(),
        client_session_id: event.client_session_id.as_deref(),
        properties: event.properties.as_deref(),
    })
}

/// A session as the API shows it (the CLI's session fields, plus state).
/// Writes one stored session as an output row (the fields of `/v1/export/sessions`
/// and `sessionizer cluster sessions`).
pub fn write_stored_session(
    sink: &mut dyn sessionizer_formats::SessionSink,
    session: &StoredSession,
) -> Result<(), sessionizer_formats::WriteError> {
    let uid = session.session_uid.to_string();
    sink.write(&SessionRow {
        user_id: session.user.user_id(),
        device_id: session.user.device_id(),
        session_id: session.session_id,
        session_uid: &uid,
        start_ms: session.start_ms,
        end_ms: session.end_ms,
        length_ms: session.length_ms(),
        active_ms: session.active_ms,
        event_count: session.event_count,
        // Still open: no end reason yet.
        end_reason: session.end_reason.as_deref().unwrap_or(""),
        entry_event_type: &session.entry_event_type,
        entry_page: session.entry_page.as_deref(),
        exit_event_type: &session.exit_event_type,
        exit_page: session.exit_page.as_deref(),
    })
}

pub(crate) fn session_json(session: &StoredSession) -> serde_json::Value {
    json!({
        "user_id": session.user.user_id(),
        "device_id": session.user.device_id(),
        "session_id": session.session_id,
        "session_uid": session.session_uid.to_string(),
        "start_ms": session.start_ms,
        "end_ms": session.end_ms,
        "length_ms": session.length_ms(),
        "active_ms": session.active_ms,
        "last_event_ms": session.last_event_ms,
        "event_count": session.event_count,
        "end_reason": session.end_reason,
        "concluded": session.concluded,
        "entry_event_type": session.entry_event_type,
        "entry_page": session.entry_page,
        "exit_event_type": session.exit_event_type,
        "exit_page": session.exit_page,
        "revision": session.revision,
    })
}

/// `Write` into the response body, chunk by chunk; blocks when the client
/// reads slower than the database, so memory stays bounded.
struct ChannelWriter {
    sender: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buffer: Vec<u8>,
}

impl ChannelWriter {
    fn send_buffer(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buffer, Vec::with_capacity(EXPORT_CHUNK_BYTES)));
        self.sender
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= EXPORT_CHUNK_BYTES {
            self.send_buffer()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_buffer()
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        // Whatever is left; a client that went away needs nothing.
        drop(self.send_buffer());
    }
}
