//! Reads: records, indexes and counts, without a transaction (each read
//! sees the state after some transaction).

use super::keys::{be, bucket, decode, hist_key, stage_byte, stage_key};
use super::trees::Tree;
use super::*;
use crate::genome::ArchId;
use crate::space::StageName;

impl Store {
    /// The search's record.
    ///
    /// # Errors
    /// A damaged database.
    pub fn search(&self) -> Result<Option<SearchRecord>, StoreError> {
        self.read(Tree::Meta, b"search")
    }

    /// Running totals.
    ///
    /// # Errors
    /// A damaged database.
    pub fn stats(&self) -> Result<Stats, StoreError> {
        Ok(self.read(Tree::Meta, b"stats")?.unwrap_or_default())
    }

    /// One candidate.
    ///
    /// # Errors
    /// A damaged database.
    pub fn candidate(&self, id: ArchId) -> Result<Option<Candidate>, StoreError> {
        self.read(Tree::Candidates, &id.0)
    }

    /// The candidates whose id starts with `prefix` (hex), at most `limit`.
    ///
    /// # Errors
    /// A damaged database.
    pub fn candidates_with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<Candidate>, StoreError> {
        let prefix = prefix.to_ascii_lowercase();
        let whole: Vec<u8> = (0..prefix.len() / 2)
            .filter_map(|i| u8::from_str_radix(&prefix[2 * i..2 * i + 2], 16).ok())
            .collect();
        let mut out = Vec::new();
        for kv in self.tree(Tree::Candidates).scan_prefix(&whole) {
            let (_, v) = kv.map_err(|e| self.db_err(e))?;
            let c: Candidate = decode("candidates", &v).map_err(|d| self.corrupt(d))?;
            if c.id.matches_prefix(&prefix) {
                out.push(c);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The candidate an index entry (`by-seq` value, `board` key tail) names.
    pub(super) fn indexed(&self, id: &[u8], index: &str) -> Result<Candidate, StoreError> {
        let id = ArchId(
            id.try_into()
                .map_err(|_| self.corrupt(format!("{index}: bad id")))?,
        );
        self.candidate(id)?
            .ok_or_else(|| self.corrupt(format!("{index} names a missing candidate")))
    }

    /// Every candidate in creation order.
    ///
    /// # Errors
    /// A damaged database.
    pub fn candidates(&self) -> Result<Vec<Candidate>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree(Tree::BySeq).iter() {
            let (_, id) = kv.map_err(|e| self.db_err(e))?;
            out.push(self.indexed(&id, "by-seq")?);
        }
        Ok(out)
    }

    /// The `n` most recent candidates, newest first.
    ///
    /// # Errors
    /// A damaged database.
    pub fn recent(&self, n: usize) -> Result<Vec<Candidate>, StoreError> {
        // `n` comes from users (`status --top`): allocate what is read.
        let mut out = Vec::new();
        for kv in self.tree(Tree::BySeq).iter().rev().take(n) {
            let (_, id) = kv.map_err(|e| self.db_err(e))?;
            out.push(self.indexed(&id, "by-seq")?);
        }
        Ok(out)
    }

    /// The best `n` candidates of `stage`, best first.
    ///
    /// # Errors
    /// A damaged database.
    pub fn top(&self, stage: StageName, n: usize) -> Result<Vec<Candidate>, StoreError> {
        // `n` comes from users (`status --top`): allocate what is read.
        let mut out = Vec::new();
        for kv in self
            .tree(Tree::Board)
            .scan_prefix([stage_byte(stage)])
            .take(n)
        {
            let (k, _) = kv.map_err(|e| self.db_err(e))?;
            out.push(self.indexed(k.get(9..25).unwrap_or_default(), "board")?);
        }
        Ok(out)
    }

    /// Candidates evaluated at `stage`: the board's length, counted (the
    /// stage's finished evaluations in [`Stats`], kept in the transaction
    /// that adds a board entry), not scanned: the search asks at every
    /// proposal.
    ///
    /// # Errors
    /// A damaged database.
    pub fn board_len(&self, stage: StageName) -> Result<usize, StoreError> {
        let done = self.stats()?.evaluations.get(&stage).map_or(0, |e| e.done);
        Ok(usize::try_from(done).unwrap_or(usize::MAX))
    }

    /// The rank (0-based) of `arch`'s score among `stage`'s results: the
    /// histogram gives the count in higher buckets, a scan of the score's
    /// own bucket the rest (a few keys, not the whole board).
    ///
    /// # Errors
    /// A damaged database.
    pub fn rank_of(&self, stage: StageName, score: f64, arch: ArchId) -> Result<usize, StoreError> {
        let hist: Vec<u64> = self
            .read(Tree::Meta, hist_key(stage).as_bytes())?
            .unwrap_or_else(|| vec![0; HIST_BUCKETS]);
        let b = bucket(score);
        let above: u64 = hist.iter().skip(b + 1).sum();
        let start = if b + 1 < HIST_BUCKETS {
            // Every key of bucket b sorts after every key of a score at the
            // bucket's upper edge.
            let mut k = board_key(
                stage,
                (b + 1) as f64 / HIST_BUCKETS as f64,
                ArchId([0xff; 16]),
            );
            k.push(0);
            k
        } else {
            vec![stage_byte(stage)]
        };
        let within = self
            .tree(Tree::Board)
            .range(start..board_key(stage, score, arch))
            .count();
        Ok(above as usize + within)
    }

    /// The Pareto front of `stage` (score up, parameters and state down).
    ///
    /// # Errors
    /// A damaged database.
    pub fn front(&self, stage: StageName) -> Result<Vec<FrontPoint>, StoreError> {
        Ok(self
            .read(Tree::Meta, format!("front/{}", stage.name()).as_bytes())?
            .unwrap_or_default())
    }

    /// The baselines seeded into the search: (name, id).
    ///
    /// # Errors
    /// A damaged database.
    pub fn baselines(&self) -> Result<Vec<(String, ArchId)>, StoreError> {
        Ok(self.read(Tree::Meta, b"baselines")?.unwrap_or_default())
    }

    /// One job.
    ///
    /// # Errors
    /// A damaged database.
    pub fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.read(Tree::Jobs, &be(id))
    }

    /// A job's full result, as stored.
    ///
    /// # Errors
    /// A damaged database.
    pub fn result(&self, id: JobId) -> Result<Option<serde_json::Value>, StoreError> {
        self.read(Tree::Results, &be(id))
    }

    /// A candidate's full result at `stage`, as stored.
    ///
    /// # Errors
    /// A damaged database.
    pub fn stage_result(
        &self,
        arch: ArchId,
        stage: StageName,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        self.read(Tree::StageResults, &stage_key(arch, stage))
    }

    /// The jobs of `cand` at `stage`, in creation order (for a stage split
    /// into runs, in run order).
    ///
    /// # Errors
    /// A damaged database.
    pub fn stage_jobs(&self, cand: &Candidate, stage: StageName) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::new();
        for &id in &cand.jobs {
            if let Some(j) = self.job(id)?
                && j.stage == stage
            {
                out.push(j);
            }
        }
        Ok(out)
    }

    /// The oldest queued job.
    ///
    /// # Errors
    /// A damaged database.
    pub fn next_queued(&self) -> Result<Option<Job>, StoreError> {
        match self.tree(Tree::Queue).first().map_err(|e| self.db_err(e))? {
            Some((k, _)) => self.read(Tree::Jobs, &k),
            None => Ok(None),
        }
    }

    /// Jobs under a lease.
    ///
    /// # Errors
    /// A damaged database.
    pub fn leased(&self) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree(Tree::Leases).iter() {
            let (k, _) = kv.map_err(|e| self.db_err(e))?;
            if let Some(j) = self.read(Tree::Jobs, &k)? {
                out.push(j);
            }
        }
        Ok(out)
    }

    /// Jobs waiting, oldest first (at most `n`).
    ///
    /// # Errors
    /// A damaged database.
    pub fn queued(&self, n: usize) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree(Tree::Queue).iter().take(n) {
            let (k, _) = kv.map_err(|e| self.db_err(e))?;
            if let Some(j) = self.read(Tree::Jobs, &k)? {
                out.push(j);
            }
        }
        Ok(out)
    }

    /// Every job, in creation order.
    ///
    /// # Errors
    /// A damaged database.
    pub fn jobs(&self) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree(Tree::Jobs).iter() {
            let (_, v) = kv.map_err(|e| self.db_err(e))?;
            out.push(decode("jobs", &v).map_err(|d| self.corrupt(d))?);
        }
        Ok(out)
    }

    /// The last `n` events, oldest first.
    ///
    /// # Errors
    /// A damaged database.
    pub fn events(&self, n: usize) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree(Tree::Events).iter().rev().take(n) {
            let (_, v) = kv.map_err(|e| self.db_err(e))?;
            out.push(decode("events", &v).map_err(|d| self.corrupt(d))?);
        }
        out.reverse();
        Ok(out)
    }
}
