//! The database's trees, by name (the module docs of [`super`] say what
//! each holds).

/// One of the database's trees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tree {
    /// `schema`, `search`, `stats`, fronts, histograms, baselines, counters.
    Meta,
    /// Arch id → [`super::Candidate`].
    Candidates,
    /// Creation number → arch id.
    BySeq,
    /// Job id → [`super::Job`].
    Jobs,
    /// Job id → (empty): jobs waiting, oldest first.
    Queue,
    /// Job id → (empty): jobs running.
    Leases,
    /// Job id → a run's result (JSON).
    Results,
    /// Event number → [`super::Event`].
    Events,
    /// Stage, score descending, arch id → (empty): the leaderboard index.
    Board,
    /// Arch id, stage → the stage's full result (JSON).
    StageResults,
}

impl Tree {
    /// Every tree, in the order of the store's handles.
    pub const ALL: [Tree; 10] = [
        Tree::Meta,
        Tree::Candidates,
        Tree::BySeq,
        Tree::Jobs,
        Tree::Queue,
        Tree::Leases,
        Tree::Results,
        Tree::Events,
        Tree::Board,
        Tree::StageResults,
    ];

    /// Its name in sled.
    pub fn name(self) -> &'static str {
        match self {
            Tree::Meta => "meta",
            Tree::Candidates => "candidates",
            Tree::BySeq => "by-seq",
            Tree::Jobs => "jobs",
            Tree::Queue => "queue",
            Tree::Leases => "leases",
            Tree::Results => "results",
            Tree::Events => "events",
            Tree::Board => "board",
            Tree::StageResults => "stage-results",
        }
    }

    /// Its index among the store's handles ([`Tree::ALL`]).
    pub(super) fn index(self) -> usize {
        self as usize
    }
}
