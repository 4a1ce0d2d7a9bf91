//! Slurm's commands: each run as an argument vector with a time limit,
//! and what they print, read; which `sbatch` options a user may add, and
//! which pending reasons never clear.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A Slurm job's state, as `squeue` and `scontrol` name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlurmState {
    /// Waiting for resources.
    Pending,
    /// Running (or configuring, completing, suspended: not ended).
    Running,
    /// Ended with exit code 0.
    Completed,
    /// Ended with a non-zero exit code or a signal.
    Failed,
    /// Killed at its time limit.
    Timeout,
    /// Cancelled (`scancel`).
    Cancelled,
    /// Preempted by a job of higher priority.
    Preempted,
    /// Killed by Slurm for memory.
    OutOfMemory,
    /// Its node failed.
    NodeFail,
    /// Another end (`BOOT_FAIL`, `DEADLINE`, …).
    Other(String),
}

impl SlurmState {
    /// Reads a state name (`RUNNING`, `CANCELLED by 0`, …).
    pub fn parse(s: &str) -> SlurmState {
        let word = s.split_whitespace().next().unwrap_or("");
        match word {
            "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" => SlurmState::Pending,
            "RUNNING" | "CONFIGURING" | "COMPLETING" | "SUSPENDED" | "STOPPED" | "RESIZING"
            | "SIGNALING" | "STAGE_OUT" | "RESV_DEL_HOLD" | "SPECIAL_EXIT" => SlurmState::Running,
            "COMPLETED" => SlurmState::Completed,
            "FAILED" => SlurmState::Failed,
            "TIMEOUT" | "DEADLINE" => SlurmState::Timeout,
            "CANCELLED" => SlurmState::Cancelled,
            "PREEMPTED" => SlurmState::Preempted,
            "OUT_OF_MEMORY" => SlurmState::OutOfMemory,
            "NODE_FAIL" | "BOOT_FAIL" => SlurmState::NodeFail,
            other => SlurmState::Other(other.to_string()),
        }
    }

    /// Whether the job has not ended.
    pub fn active(&self) -> bool {
        matches!(self, SlurmState::Pending | SlurmState::Running)
    }
}

/// One line of `squeue -o %i|%j|%T|%r`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued {
    /// Job id.
    pub id: u64,
    /// Job name.
    pub name: String,
    /// State.
    pub state: SlurmState,
    /// Why it waits or ended (`Resources`, `NonZeroExitCode`, …).
    pub reason: String,
}

/// The `squeue` format [`parse_squeue`] reads.
const SQUEUE_FORMAT: &str = "%i|%j|%T|%r";

/// Reads `squeue -h -o %i|%j|%T|%r` output; lines it cannot read (an array
/// job's `123_[1-4]`) are skipped.
pub fn parse_squeue(out: &str) -> Vec<Queued> {
    out.lines()
        .filter_map(|line| {
            // A name may hold `|`: the state and reason are the last two
            // fields.
            let mut f = line.trim().rsplitn(3, '|');
            let reason = f.next()?.to_string();
            let state = SlurmState::parse(f.next()?);
            let (id, name) = f.next()?.split_once('|')?;
            let id = id.trim().parse().ok()?;
            let name = name.to_string();
            Some(Queued {
                id,
                name,
                state,
                reason,
            })
        })
        .collect()
}

/// Reads `sbatch --parsable` output: `ID` or `ID;CLUSTER`.
pub fn parse_sbatch(out: &str) -> Option<u64> {
    let line = out.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    line.split(';').next()?.trim().parse().ok()
}

/// What `scontrol show job -o` says of an ended job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    /// Its state.
    pub state: SlurmState,
    /// The batch script's exit code.
    pub code: Option<i32>,
    /// The signal that ended it, if one.
    pub signal: Option<i32>,
    /// Slurm's reason.
    pub reason: String,
}

/// Reads `scontrol show job -o ID` (one line of `Key=Value` pairs).
pub fn parse_scontrol(out: &str) -> Option<Ended> {
    let mut state = None;
    let (mut code, mut signal, mut reason) = (None, None, String::new());
    for field in out.split_whitespace() {
        if let Some(v) = field.strip_prefix("JobState=") {
            state = Some(SlurmState::parse(v));
        } else if let Some(v) = field.strip_prefix("ExitCode=") {
            let (c, s) = v.split_once(':').unwrap_or((v, "0"));
            code = c.parse().ok();
            signal = s.parse().ok().filter(|&s: &i32| s != 0);
        } else if let Some(v) = field.strip_prefix("Reason=") {
            reason = v.to_string();
        }
    }
    Some(Ended {
        state: state?,
        code,
        signal,
        reason,
    })
}

/// How long a Slurm command may take before it is killed (a controller
/// that does not answer must not hang the daemon).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs a Slurm command (an argument vector) for at most
/// [`COMMAND_TIMEOUT`]; its stdout, or what it said on stderr and how it
/// ended.
pub(super) fn slurm_command(program: &str, args: &[&std::ffi::OsStr]) -> Result<String, String> {
    use std::io::Read as _;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!("`{program}` is not on PATH: load the cluster's Slurm module")
            } else {
                format!("cannot run `{program}`: {e}")
            }
        })?;
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut v);
            }
            v
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!(
                    "`{program}` did not answer within {} s (is slurmctld up?)",
                    COMMAND_TIMEOUT.as_secs()
                ));
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("lost track of `{program}`: {e}"));
            }
        }
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    let status = status?;
    if status.success() {
        return Ok(String::from_utf8_lossy(&out).into_owned());
    }
    let said = String::from_utf8_lossy(&err);
    let said: Vec<&str> = said
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    Err(format!(
        "`{program}` failed ({status}){}",
        if said.is_empty() {
            String::new()
        } else {
            format!(": {}", said.join(" | "))
        }
    ))
}

/// Checks that the Slurm commands the executor calls are there.
///
/// # Errors
/// The first one missing or failing, said with what to do.
pub fn check_commands() -> Result<(), String> {
    for program in ["sbatch", "squeue", "scancel", "scontrol"] {
        slurm_command(program, &["--version".as_ref()])?;
    }
    Ok(())
}

/// `sbatch` options the executor sets itself, which `--slurm-arg` may not
/// override (short forms with their letter).
const RESERVED: &[(&str, Option<char>)] = &[
    ("--job-name", Some('J')),
    ("--output", Some('o')),
    ("--error", Some('e')),
    ("--chdir", Some('D')),
    ("--time", Some('t')),
    ("--signal", None),
    ("--array", Some('a')),
    ("--parsable", None),
    ("--requeue", None),
    ("--no-requeue", None),
    ("--open-mode", None),
    ("--wait", Some('W')),
    ("--test-only", None),
    ("--hold", Some('H')),
    ("--clusters", Some('M')),
    ("--wrap", None),
    ("--cpus-per-task", Some('c')),
    ("--partition", Some('p')),
    ("--account", Some('A')),
    ("--gres", None),
];

/// Checks one `--slurm-arg`: a single option word (`--qos=short`), not one
/// the executor sets itself.
///
/// # Errors
/// What is wrong and what to write instead.
pub fn check_extra_arg(arg: &str) -> Result<(), String> {
    if !arg.starts_with('-') || arg.chars().any(char::is_whitespace) {
        return Err(format!(
            "--slurm-arg `{arg}`: expected one sbatch option as one word, with its value \
             after `=` (e.g. --slurm-arg=--qos=short)"
        ));
    }
    let long = arg.split('=').next().unwrap_or(arg);
    for (name, short) in RESERVED {
        let hit = long == *name
            || short.is_some_and(|c| {
                let mut ch = arg.chars();
                ch.next() == Some('-') && ch.next() == Some(c)
            });
        if hit {
            let instead = match *name {
                "--time" => "; --job-timeout sets it",
                "--cpus-per-task" => "; --threads sets it",
                "--partition" => "; use --slurm-partition",
                "--account" => "; use --slurm-account",
                "--gres" => "; use --slurm-gres",
                _ => "",
            };
            return Err(format!(
                "--slurm-arg `{arg}`: mad-search sets {name} itself (it watches, signals and \
                 cancels jobs by it){instead}"
            ));
        }
    }
    Ok(())
}

/// Reasons a pending job never starts for: its request is over a limit or
/// not allowed. The search stops with the reason instead of waiting forever.
const HOPELESS: &[(&str, &str)] = &[
    (
        "PartitionTimeLimit",
        "its time limit (--job-timeout) is over the partition's: lower --job-timeout or pick \
         another partition",
    ),
    (
        "QOSMaxWallDurationPerJobLimit",
        "its time limit (--job-timeout) is over the QOS's: lower --job-timeout",
    ),
    (
        "PartitionNodeLimit",
        "it asks for more nodes than the partition allows",
    ),
    (
        "AccountNotAllowed",
        "the account may not use the partition: check --slurm-account",
    ),
    ("InvalidAccount", "check --slurm-account"),
    ("InvalidQOS", "check the QOS in --slurm-arg"),
    (
        "BadConstraints",
        "no node matches what it asks for (--slurm-gres, --slurm-arg)",
    ),
    (
        "DependencyNeverSatisfied",
        "a dependency in --slurm-arg can never be met",
    ),
];

/// What to say of a pending job's reason that never clears, if it is one.
pub fn hopeless(reason: &str) -> Option<&'static str> {
    HOPELESS
        .iter()
        .find(|(r, _)| reason.trim() == *r)
        .map(|(_, why)| *why)
}

/// `squeue` for all states, with `filter` (`--name=…`), read.
pub(super) fn squeue(filter: &[String]) -> Result<Vec<Queued>, String> {
    let mut args: Vec<&std::ffi::OsStr> = vec!["--noheader".as_ref(), "--states=all".as_ref()];
    args.extend(filter.iter().map(|f| -> &std::ffi::OsStr { f.as_ref() }));
    let format = format!("--format={SQUEUE_FORMAT}");
    args.push(format.as_ref());
    slurm_command("squeue", &args).map(|out| parse_squeue(&out))
}
