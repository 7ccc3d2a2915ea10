//! The server's copy of the board index ([`sessionizer_store::Board`]):
//! loaded from the store on a background thread at start, then brought up to
//! date from the change log before every query, so a query sees every change
//! committed before it began (acknowledged events included).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use sessionizer_store::{Board, Store};

use crate::error::ApiError;

#[derive(Debug, Default)]
pub(crate) struct BoardState {
    /// `None` until the first load finishes.
    board: RwLock<Option<Board>>,
    /// Why the load failed, if it did (queries then answer 500 with it logged).
    failure: Mutex<Option<String>>,
}

impl BoardState {
    /// Loads the board from the store in `dir` on a new thread.
    pub(crate) fn start_loading(self: &Arc<Self>, dir: PathBuf) {
        let state = self.clone();
        let spawned = std::thread::Builder::new().name("board-load".into()).spawn(move || {
            let started = Instant::now();
            match Store::open_reader(&dir).and_then(|store| store.load_board()) {
                Ok(board) => {
                    tracing::info!(
                        sessions = board.session_count(),
                        seconds = started.elapsed().as_secs_f64(),
                        "board index loaded"
                    );
                    *state.board.write().unwrap_or_else(|p| p.into_inner()) = Some(board);
                }
                Err(error) => {
                    tracing::error!(%error, "cannot load the board index");
                    *state.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.to_string());
                }
            }
        });
        if let Err(error) = spawned {
            *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("cannot start a thread: {error}"));
        }
    }

    /// Runs `read` on the board after applying every change recorded so far.
    pub(crate) fn read<T>(&self, store: &Store, read: impl FnOnce(&Board) -> T) -> Result<T, ApiError> {
        {
            let mut guard = self.board.write().unwrap_or_else(|p| p.into_inner());
            let Some(board) = guard.as_mut() else {
                if let Some(failure) = self.failure.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    return Err(ApiError::Internal(format!("the board index did not load: {failure}")));
                }
                return Err(ApiError::Loading("the session index is still loading".into()));
            };
            store.catch_up_board(board)?;
        }
        let guard = self.board.read().unwrap_or_else(|p| p.into_inner());
        Ok(read(guard.as_ref().expect("loaded: checked above, never unset")))
    }
}
