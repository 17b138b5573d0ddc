//! A grouping's function per generation: the first run's, and one per re-run that sent
//! records to this shard.
//!
//! A re-run regroups its subset from the inputs again, so its aggregates must not meet
//! the first run's: those are closed (a repeat would be dropped) or still open (a re-run
//! record would complete them early). Each generation therefore gets a function of its
//! own, created like the first, and its state goes to the same changelog under keys
//! prefixed `#GENERATION/` (`#` is in no key of the hierarchy); the entry `#GENERATION`
//! holds the re-run's scope, so a restored shard knows what its outputs carry.

use std::collections::BTreeMap;

use wellspring_protocol::rerun::{RerunScope, Subset};

use crate::functions::{CreateFn, FunctionParams, RestoreError, StreamFunction};

/// A re-run's function and what its outputs carry.
pub struct Rerun {
    pub scope: RerunScope,
    pub function: Box<dyn StreamFunction>,
    /// The scope is not on the changelog yet.
    scope_unwritten: bool,
}

/// The functions of one grouping shard, by generation.
pub struct Generations {
    create: CreateFn,
    params: FunctionParams,
    pub first: Box<dyn StreamFunction>,
    pub reruns: BTreeMap<u32, Rerun>,
}

/// Where a changelog key belongs.
enum StateKey<'a> {
    First(&'a str),
    Scope(u32),
    Rerun(u32, &'a str),
}

fn parse(key: &str) -> Option<StateKey<'_>> {
    let Some(rest) = key.strip_prefix('#') else {
        return Some(StateKey::First(key));
    };
    match rest.split_once('/') {
        None => rest.parse().ok().map(StateKey::Scope),
        Some((generation, key)) => generation
            .parse()
            .ok()
            .map(|generation| StateKey::Rerun(generation, key)),
    }
}

impl Generations {
    pub fn new(create: CreateFn, params: FunctionParams) -> Self {
        let first = create(&params);
        Self {
            create,
            params,
            first,
            reruns: BTreeMap::new(),
        }
    }

    /// The function of `scope`'s generation, made when this is its first record here.
    pub fn rerun(&mut self, scope: &RerunScope) -> &mut Rerun {
        let (create, params) = (&self.create, &self.params);
        self.reruns
            .entry(scope.generation)
            .or_insert_with(|| Rerun {
                scope: scope.clone(),
                function: create(params),
                scope_unwritten: true,
            })
    }

    /// The function of `generation`, if it exists here.
    pub fn function(&mut self, generation: u32) -> Option<&mut dyn StreamFunction> {
        if generation == 0 {
            return Some(self.first.as_mut());
        }
        match self.reruns.get_mut(&generation) {
            Some(rerun) => Some(rerun.function.as_mut()),
            None => None,
        }
    }

    /// When the first of the generations' timers is due (clock milliseconds), if any is.
    pub fn due_ms(&self) -> Option<i64> {
        std::iter::once(&self.first)
            .chain(self.reruns.values().map(|rerun| &rerun.function))
            .filter_map(|function| function.due_ms())
            .min()
    }

    /// The generations there are: 0 and the re-runs'.
    pub fn all(&self) -> Vec<u32> {
        std::iter::once(0)
            .chain(self.reruns.keys().copied())
            .collect()
    }

    /// The scope of `generation` (`None` for the first run).
    pub fn scope(&self, generation: u32) -> Option<&RerunScope> {
        self.reruns.get(&generation).map(|rerun| &rerun.scope)
    }

    /// Applies one changelog entry while the shard restores.
    pub fn restore(&mut self, key: &str, entry: Option<&[u8]>) -> Result<(), RestoreError> {
        match parse(key) {
            Some(StateKey::First(key)) => self.first.restore(key, entry),
            Some(StateKey::Scope(generation)) => {
                let scope = entry
                    .and_then(|bytes| serde_json::from_slice::<RerunScope>(bytes).ok())
                    .ok_or_else(|| RestoreError::Key {
                        key: key.to_owned(),
                        level: "re-run scope",
                    })?;
                let rerun = self.placeholder(generation);
                rerun.scope = scope;
                rerun.scope_unwritten = false;
                Ok(())
            }
            Some(StateKey::Rerun(generation, key)) => {
                self.placeholder(generation).function.restore(key, entry)
            }
            None => Err(RestoreError::Key {
                key: key.to_owned(),
                level: "generation",
            }),
        }
    }

    /// A re-run met on the changelog: its scope follows (or, compacted oddly, is lost:
    /// its outputs then carry the generation and an empty subset).
    fn placeholder(&mut self, generation: u32) -> &mut Rerun {
        self.rerun(&RerunScope {
            generation,
            subset: Subset {
                experiment: String::new(),
                plate: None,
                wells: Vec::new(),
            },
            downstream: false,
        })
    }

    /// State changed since the last call, every generation's, keyed for the changelog.
    pub fn take_changes(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        let mut changes = self.first.take_changes();
        for (generation, rerun) in &mut self.reruns {
            if std::mem::take(&mut rerun.scope_unwritten) {
                changes.push((
                    format!("#{generation}"),
                    serde_json::to_vec(&rerun.scope).ok(),
                ));
            }
            changes.extend(
                rerun
                    .function
                    .take_changes()
                    .into_iter()
                    .map(|(key, state)| (format!("#{generation}/{key}"), state)),
            );
        }
        changes
    }

    pub fn open_count(&self) -> usize {
        self.first.open_count()
            + self
                .reruns
                .values()
                .map(|r| r.function.open_count())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_keys_name_their_generation() {
        assert!(matches!(parse("E/1/B02"), Some(StateKey::First("E/1/B02"))));
        assert!(matches!(parse("#3"), Some(StateKey::Scope(3))));
        assert!(matches!(
            parse("#3/E/1/B02"),
            Some(StateKey::Rerun(3, "E/1/B02"))
        ));
        assert!(parse("#x/E").is_none() && parse("#").is_none());
    }
}
