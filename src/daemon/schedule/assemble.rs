//! A split stage's result, assembled by the job that finishes its last run.

use super::*;

/// The stage's result once `done`'s run is the last of the candidate's
/// split stage: the other runs' results read back from the store, this one
/// added, assembled. [`StageEnd::Pending`] while others are to finish or
/// once the stage has failed.
pub(super) fn assemble_split(
    store: &Store,
    done: &Done,
    this: &Evaluation,
    preset: &crate::space::Preset,
    corpus: &str,
) -> anyhow::Result<Result<Option<(StageSummary, serde_json::Value)>, String>> {
    let Some(cand) = store.candidate(done.arch)? else {
        return Ok(Ok(None));
    };
    if cand.failed.contains_key(&done.stage) {
        return Ok(Ok(None));
    }
    let jobs: Vec<Job> = store.stage_jobs(&cand, done.stage)?;
    if jobs
        .iter()
        .any(|j| j.id != done.job && !matches!(j.state, JobState::Done { .. }))
    {
        return Ok(Ok(None));
    }
    // Every other run is done: read their results, in run order.
    let mut values = Vec::with_capacity(jobs.len());
    for j in &jobs {
        if j.id == done.job {
            values.push(None);
        } else {
            match store.result(j.id)? {
                Some(v) => values.push(Some(v)),
                None => return Ok(Err(format!("job {} is done but has no result", j.id))),
            }
        }
    }
    fn collect<T: serde::de::DeserializeOwned + Clone>(
        jobs: &[Job],
        values: Vec<Option<serde_json::Value>>,
        this: &T,
    ) -> Result<Vec<T>, String> {
        jobs.iter()
            .zip(values)
            .map(|(j, v)| match v {
                None => Ok(this.clone()),
                Some(v) => serde_json::from_value(v)
                    .map_err(|e| format!("the stored result of job {} is unreadable: {e}", j.id)),
            })
            .collect()
    }
    let (score, per_task, predicted_loss, seconds, full) = match this {
        Evaluation::Setting(r) => {
            let settings = match collect(&jobs, values, r) {
                Ok(x) => x,
                Err(e) => return Ok(Err(e)),
            };
            let seconds = settings
                .iter()
                .flat_map(|s| s.runs.iter().map(|r| r.result.seconds))
                .sum();
            let Some(stage_settings) = preset.tasks(done.stage) else {
                return Ok(Err(format!("{} has no task settings", done.stage.name())));
            };
            let r = crate::stages::assemble(done.stage, stage_settings, settings, seconds);
            (
                r.score,
                r.per_task.clone(),
                None,
                seconds,
                serde_json::to_value(&r)?,
            )
        }
        Evaluation::Run(r) if done.stage == StageName::Overtrain => {
            let runs = match collect(&jobs, values, r) {
                Ok(x) => x,
                Err(e) => return Ok(Err(e)),
            };
            let seconds = runs.iter().map(|r| r.result.seconds).sum();
            let Some(scale) = prior_scale(store, done.arch, done.stage)? else {
                return Ok(Err(
                    "the candidate's scale result is missing or unreadable".into()
                ));
            };
            match crate::stages::overtrain::assemble(&preset.scale, corpus, &scale, runs, seconds) {
                Ok(r) => (
                    r.score,
                    Default::default(),
                    Some(r.loss),
                    seconds,
                    serde_json::to_value(&r)?,
                ),
                Err(e) => return Ok(Err(e.to_string())),
            }
        }
        Evaluation::Run(r) => {
            let runs = match collect(&jobs, values, r) {
                Ok(x) => x,
                Err(e) => return Ok(Err(e)),
            };
            let seconds = runs.iter().map(|r| r.result.seconds).sum();
            match crate::stages::scale::assemble(&preset.scale, corpus, runs, seconds) {
                Ok(r) => (
                    r.score,
                    Default::default(),
                    Some(r.predicted_loss),
                    seconds,
                    serde_json::to_value(&r)?,
                ),
                Err(e) => return Ok(Err(e.to_string())),
            }
        }
        Evaluation::Tasks(_) | Evaluation::Scale(_) | Evaluation::Overtrain(_) => {
            return Ok(Err("a whole-stage result among split runs".into()));
        }
    };
    Ok(Ok(Some((
        StageSummary {
            job: done.job,
            score,
            per_task,
            seconds,
            finished: now(),
            predicted_loss,
        },
        full,
    ))))
}
