//! The append-only spill journal: audit rows the database could not take
//! yet, as JSON lines in `AUDIT_JOURNAL_DIR`.
//!
//! New rows go to `active.jsonl`. To replay, the writer seals it (renames it
//! to `segment-<n>.jsonl`, so appends continue in a fresh file), writes the
//! segment's rows to the database batch by batch, and deletes the segment
//! only after its last batch is confirmed. A crash in between replays the
//! segment again; event ids make that harmless. One process owns a journal
//! directory at a time (an exclusive lock on `.lock`).
//!
//! Durability: [`Journal::sync`] (`fdatasync`) is called by the writer right
//! after it spills, and at least once a second for rows the hot path
//! appended; a row appended without a sync survives a process crash (it is
//! in the page cache) but not a power loss.
//!
//! Every call here does file I/O and may block: callers run them on a
//! blocking thread, never on a runtime thread. No fsync runs under the
//! state lock (an append waiting behind a disk flush would stall whoever
//! feeds the journal), and the counters the writer's loop reads
//! ([`Journal::pending_rows`], [`Journal::has_pending`]) take no lock.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

use super::AuditEvent;

const ACTIVE: &str = "active.jsonl";
const LOCK: &str = ".lock";

/// A journal operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing a journal file failed. The cause is displayed,
    /// not exposed as `source()` (a chain-walking logger would repeat it).
    #[error("audit journal {}: {error}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// Another process holds the directory: a configuration mistake (two
    /// instances sharing a working directory), so the message says which
    /// setting to change.
    #[error(
        "audit journal {} is locked by another running gateway; give each instance its own AUDIT_JOURNAL_DIR",
        .0.display()
    )]
    Locked(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |error| JournalError::Io { path: path.to_owned(), error }
}

/// The journal of one gateway process.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    state: Mutex<State>,
    lock: Mutex<Option<File>>,
    /// Rows in the journal not yet confirmed written (a gauge).
    pending: AtomicU64,
    /// Whether there is an active file or a sealed segment (kept in step
    /// with `state` under its lock, read without it).
    nonempty: AtomicBool,
}

#[derive(Debug)]
struct State {
    active: Option<File>,
    dirty: bool,
    /// Sealed segments, oldest first, with their row counts.
    sealed: VecDeque<PathBuf>,
    next_seq: u64,
}

impl State {
    fn nonempty(&self) -> bool {
        self.active.is_some() || !self.sealed.is_empty()
    }
}

/// A sealed segment being replayed.
#[derive(Debug)]
pub struct Segment {
    /// Its file.
    pub path: PathBuf,
    reader: BufReader<File>,
    line: String,
}

/// One batch read from a segment.
#[derive(Debug, Default)]
pub struct SegmentBatch {
    /// The rows.
    pub rows: Vec<AuditEvent>,
    /// Lines that were not a row (a torn last line after a crash).
    pub invalid: u64,
    /// Whether the segment has no more lines.
    pub done: bool,
}

impl Journal {
    /// Opens (creating) the directory, takes its lock, and seals what a
    /// previous process left in `active.jsonl` so it is replayed first.
    pub fn open(dir: &Path) -> Result<Self, JournalError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join(LOCK);
        let lock =
            OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(JournalError::Locked(dir.to_owned())),
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let mut segments = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(seq) = name.strip_prefix("segment-").and_then(|s| s.strip_suffix(".jsonl"))
                && let Ok(seq) = seq.parse::<u64>()
            {
                segments.push((seq, entry.path()));
            }
        }
        segments.sort();
        let next_seq = segments.last().map_or(1, |(s, _)| s + 1);
        let mut pending = 0;
        for (_, path) in &segments {
            pending += count_lines(path)?;
        }
        let nonempty = !segments.is_empty();
        let journal = Self {
            dir: dir.to_owned(),
            state: Mutex::new(State {
                active: None,
                dirty: false,
                sealed: segments.into_iter().map(|(_, p)| p).collect(),
                next_seq,
            }),
            lock: Mutex::new(Some(lock)),
            pending: AtomicU64::new(pending),
            nonempty: AtomicBool::new(nonempty),
        };
        let active = dir.join(ACTIVE);
        if active.exists() {
            let rows = count_lines(&active)?;
            journal.pending.fetch_add(rows, Ordering::Relaxed);
            journal.seal()?;
        }
        Ok(journal)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends rows (buffered by the OS; see [`Journal::sync`]).
    pub fn append(&self, rows: &[AuditEvent]) -> Result<(), JournalError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(rows.len() * 320);
        for row in rows {
            // Serialising plain strings, numbers and a UUID cannot fail.
            if serde_json::to_writer(&mut buf, row).is_ok() {
                buf.push(b'\n');
            }
        }
        let path = self.dir.join(ACTIVE);
        let mut st = self.state.lock();
        if st.active.is_none() {
            let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
            st.active = Some(file);
        }
        self.nonempty.store(true, Ordering::Relaxed);
        if let Some(file) = st.active.as_mut() {
            file.write_all(&buf).map_err(io(&path))?;
        }
        st.dirty = true;
        self.pending.fetch_add(rows.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Forces appended rows to disk. The lock is held only to clone the
    /// handle: the hot path's appends do not wait for the disk.
    pub fn sync(&self) -> Result<(), JournalError> {
        let file = {
            let mut st = self.state.lock();
            if !st.dirty {
                return Ok(());
            }
            st.dirty = false;
            match st.active.as_ref().map(File::try_clone) {
                Some(Ok(f)) => f,
                Some(Err(e)) => return Err(io(&self.dir.join(ACTIVE))(e)),
                None => return Ok(()),
            }
        };
        file.sync_data().map_err(io(&self.dir.join(ACTIVE)))
    }

    /// Rows in the journal not yet confirmed written.
    pub fn pending_rows(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Whether anything waits in the journal.
    pub fn has_pending(&self) -> bool {
        self.nonempty.load(Ordering::Relaxed)
    }

    /// The oldest segment to replay, sealing the active file when no sealed
    /// segment is left; `None` when the journal is empty.
    pub fn next_segment(&self) -> Result<Option<Segment>, JournalError> {
        let seal = {
            let st = self.state.lock();
            st.sealed.is_empty() && st.active.is_some()
        };
        if seal {
            self.seal()?;
        }
        let path = match self.state.lock().sealed.front() {
            Some(p) => p.clone(),
            None => return Ok(None),
        };
        let file = File::open(&path).map_err(io(&path))?;
        Ok(Some(Segment { path, reader: BufReader::new(file), line: String::new() }))
    }

    /// Marks `rows` journal rows as written (or skipped as invalid).
    pub fn confirm(&self, rows: u64) {
        let _ = self.pending.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(rows)));
    }

    /// Deletes a fully written segment.
    pub fn finish_segment(&self, segment: Segment) -> Result<(), JournalError> {
        let Segment { path, reader, .. } = segment;
        drop(reader);
        std::fs::remove_file(&path).map_err(io(&path))?;
        let mut st = self.state.lock();
        st.sealed.retain(|p| p != &path);
        self.nonempty.store(st.nonempty(), Ordering::Relaxed);
        Ok(())
    }

    /// Lets another process take the directory (after the final flush).
    pub fn release(&self) {
        let _ = self.sync();
        if let Some(lock) = self.lock.lock().take() {
            let _ = lock.unlock();
        }
    }

    /// Renames the active file to the next segment (appends from now on
    /// open a fresh one), then flushes the old file to disk: the rename is
    /// done under the state lock, the fsync after it is released.
    /// Runs `f` holding the state lock, as an append stuck on a slow disk
    /// would: for tests of who waits on it.
    #[cfg(test)]
    pub(crate) fn while_locked<R>(&self, f: impl FnOnce() -> R) -> R {
        let _held = self.state.lock();
        f()
    }

    fn seal(&self) -> Result<(), JournalError> {
        let active = self.dir.join(ACTIVE);
        let (file, sealed) = {
            let mut st = self.state.lock();
            let file = st.active.take();
            st.dirty = false;
            let sealed = if active.exists() {
                let sealed = self.dir.join(format!("segment-{:020}.jsonl", st.next_seq));
                std::fs::rename(&active, &sealed).map_err(io(&active))?;
                st.next_seq += 1;
                st.sealed.push_back(sealed.clone());
                Some(sealed)
            } else {
                None
            };
            self.nonempty.store(st.nonempty(), Ordering::Relaxed);
            (file, sealed)
        };
        // The handle still names the renamed file.
        if let (Some(file), Some(sealed)) = (file, sealed) {
            file.sync_data().map_err(io(&sealed))?;
        }
        Ok(())
    }
}

impl Segment {
    /// Reads up to `max` rows from where the last batch ended.
    pub fn read_batch(&mut self, max: usize) -> Result<SegmentBatch, JournalError> {
        let mut batch = SegmentBatch::default();
        while batch.rows.len() < max {
            self.line.clear();
            let n = self.reader.read_line(&mut self.line).map_err(io(&self.path))?;
            if n == 0 {
                batch.done = true;
                break;
            }
            let text = self.line.trim_end();
            if text.is_empty() {
                continue;
            }
            match serde_json::from_str::<AuditEvent>(text) {
                Ok(row) => batch.rows.push(row),
                Err(e) => {
                    tracing::warn!(file = %self.path.display(), error = %e, "skipping an unreadable audit journal line");
                    batch.invalid += 1;
                }
            }
        }
        Ok(batch)
    }

    /// Where the next batch starts (for resuming after a failed write).
    pub fn position(&mut self) -> Result<u64, JournalError> {
        self.reader.stream_position().map_err(io(&self.path))
    }

    /// Goes back to `pos` (the start of a batch whose write failed).
    pub fn rewind(&mut self, pos: u64) -> Result<(), JournalError> {
        self.reader.seek(SeekFrom::Start(pos)).map(|_| ()).map_err(io(&self.path))
    }
}

fn count_lines(path: &Path) -> Result<u64, JournalError> {
    let file = File::open(path).map_err(io(path))?;
    let mut n = 0;
    for line in BufReader::new(file).split(b'\n') {
        if !line.map_err(io(path))?.is_empty() {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::{TempDir, event};

    fn temp() -> TempDir {
        TempDir(std::env::temp_dir().join(format!("venta-journal-{}", uuid::Uuid::new_v4().simple())))
    }

    #[test]
    fn rows_survive_a_reopen_and_replay_in_order_then_vanish() {
        let dir = temp();
        let j = Journal::open(&dir.0).unwrap();
        let rows: Vec<_> = (0..5).map(event).collect();
        j.append(&rows[..2]).unwrap();
        j.sync().unwrap();
        // The first segment is sealed; appends go on in a new active file.
        let mut seg = j.next_segment().unwrap().unwrap();
        j.append(&rows[2..]).unwrap();
        let b = seg.read_batch(10).unwrap();
        assert_eq!((b.rows, b.done), (rows[..2].to_vec(), true));
        j.confirm(2);
        j.finish_segment(seg).unwrap();
        assert_eq!(j.pending_rows(), 3);
        j.release();
        drop(j);
        // A new process finds the unsealed rows and replays them.
        let j = Journal::open(&dir.0).unwrap();
        assert_eq!(j.pending_rows(), 3);
        let mut seg = j.next_segment().unwrap().unwrap();
        let pos = seg.position().unwrap();
        let first = seg.read_batch(2).unwrap();
        assert_eq!(first.rows, rows[2..4].to_vec());
        seg.rewind(pos).unwrap();
        let again = seg.read_batch(10).unwrap();
        assert_eq!(again.rows, rows[2..].to_vec());
        j.finish_segment(seg).unwrap();
        assert!(!j.has_pending());
        assert!(j.next_segment().unwrap().is_none());
    }

    #[test]
    fn a_torn_line_is_skipped_and_a_second_owner_refused() {
        let dir = temp();
        let j = Journal::open(&dir.0).unwrap();
        assert!(matches!(Journal::open(&dir.0), Err(JournalError::Locked(_))));
        j.append(&[event(1)]).unwrap();
        let mut f = OpenOptions::new().append(true).open(dir.0.join(ACTIVE)).unwrap();
        f.write_all(b"{\"eventId\":\"trunc").unwrap();
        let mut seg = j.next_segment().unwrap().unwrap();
        let b = seg.read_batch(10).unwrap();
        assert_eq!((b.rows.len(), b.invalid, b.done), (1, 1, true));
    }
}
