//! Schema versions and the upgrades between them.

use super::keys::{be, encode, stage_key};
use super::trees::Tree;
use super::*;
use crate::space::StageName;

/// The schema this binary writes. Older databases are upgraded on open by
/// [`MIGRATIONS`]; newer ones are refused.
pub const SCHEMA: u32 = 2;

/// Upgrades from schema `i + 1` to `i + 2`, applied in order when a writer
/// opens the database. Each is one transaction that writes the new schema
/// number with its changes: a kill leaves the old database whole.
const MIGRATIONS: &[Migration] = &[migrate_to_2];

/// One schema upgrade.
type Migration = fn(&Store) -> Result<(), StoreError>;

/// Schema 1 → 2: stages may run as several jobs. Full stage results move
/// from `results` (under the job that produced them) to `stage-results`,
/// and the per-stage evaluation counts are derived from the candidates.
/// Reads first (the caller holds the write lock: nothing changes meanwhile),
/// then every write and the new schema number in one transaction.
fn migrate_to_2(store: &Store) -> Result<(), StoreError> {
    let mut evaluations: std::collections::BTreeMap<StageName, Evaluations> = Default::default();
    let mut moves = Vec::new();
    for c in store.candidates()? {
        for &stage in &c.queued {
            let e = evaluations.entry(stage).or_default();
            if c.stages.contains_key(&stage) {
                e.done += 1;
            } else if c.failed.contains_key(&stage) {
                e.failed += 1;
            } else {
                e.open += 1;
            }
        }
        for (&stage, summary) in &c.stages {
            let old = be(summary.job);
            if let Some(full) = store
                .tree(Tree::Results)
                .get(old)
                .map_err(|e| store.db_err(e))?
            {
                moves.push((old, stage_key(c.id, stage), full));
            }
        }
    }
    let mut stats = store.stats()?;
    stats.evaluations = evaluations;
    store.tx(|tx| {
        for (old, key, full) in &moves {
            tx.tree(Tree::StageResults).insert(&key[..], full.clone())?;
            tx.tree(Tree::Results).remove(&old[..])?;
        }
        tx.meta().insert("stats", encode(&stats))?;
        tx.meta().insert("schema", &2u32.to_be_bytes())?;
        Ok(())
    })
}

impl Store {
    /// The database's schema number.
    pub(super) fn schema(&self) -> Result<u32, StoreError> {
        let raw = self
            .tree(Tree::Meta)
            .get("schema")
            .map_err(|e| self.db_err(e))?;
        match raw.as_deref() {
            Some(b) if b.len() == 4 => Ok(u32::from_be_bytes(b.try_into().expect("4 bytes"))),
            Some(_) => Err(self.corrupt("the schema version is not a u32")),
            None => Err(self.corrupt("no schema version (not a mad-search database?)")),
        }
    }

    /// Refuses a schema this binary cannot read; a writer upgrades an older
    /// one ([`MIGRATIONS`], each one transaction that ends with the new
    /// number); a reader never writes, and refuses it.
    pub(super) fn check_schema(&self, writer: bool) -> Result<(), StoreError> {
        let found = self.schema()?;
        if found == 0 {
            return Err(self.corrupt(format!(
                "its schema number is 0, and mad-search schemas run from 1 to {SCHEMA}"
            )));
        }
        if found > SCHEMA {
            return Err(StoreError::Newer {
                dir: self.dir.clone(),
                found,
                supported: SCHEMA,
            });
        }
        if found < SCHEMA && !writer {
            return Err(StoreError::Older {
                dir: self.dir.clone(),
                found,
                supported: SCHEMA,
            });
        }
        for migrate in MIGRATIONS.iter().skip(found as usize - 1) {
            migrate(self)?;
        }
        Ok(())
    }
}
