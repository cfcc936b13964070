//! The reference population of §11: N profiles, each with one checking account whose
//! card id is its index, so load generators can pay cards `0 .. N`.

use plafond_shards::command::{AccountKind, Command, Opening, Outcome, RegionId, Request};

use crate::engine::Engine;
use crate::error::EngineError;

use crate::limits::POPULATE_CHUNK;

impl Engine {
    /// Creates `accounts` profiles in `region`, each with a checking account holding
    /// `deposit_minor` and a card with ceiling `ceiling_minor`; card ids are
    /// `0 .. accounts`. Refused unless the engine is empty. `progress` hears the count
    /// done after each chunk.
    pub fn populate(
        &self,
        region: RegionId,
        accounts: u64,
        opening: Opening,
        mut progress: impl FnMut(u64),
    ) -> Result<(), EngineError> {
        let profiles: u64 = self.cut(|state| state.profiles.len() as u64)?.iter().sum();
        if profiles > 0 {
            return Err(EngineError::NotEmpty(profiles));
        }
        let mut start = 0;
        while start < accounts {
            let end = accounts.min(start + POPULATE_CHUNK);
            let open_profiles =
                (start..end).map(|_| Request::new(Command::OpenProfile { region })).collect();
            let outcomes = self.submit(open_profiles)?.wait()?;
            check_ids(start, outcomes, |outcome| match outcome {
                Outcome::ProfileOpened { profile } => Some(*profile),
                _ => None,
            })?;
            let open_accounts = (start..end)
                .map(|profile| {
                    let kind = AccountKind::Checking;
                    Request::new(Command::OpenAccount { profile, kind, opening: Some(opening) })
                })
                .collect();
            let outcomes = self.submit(open_accounts)?.wait()?;
            check_ids(start, outcomes, |outcome| match outcome {
                Outcome::AccountOpened { account, card: Some(card) } if account == card => {
                    Some(*card)
                }
                _ => None,
            })?;
            progress(end);
            start = end;
        }
        Ok(())
    }
}

fn check_ids(
    start: u64,
    outcomes: Vec<Outcome>,
    id: impl Fn(&Outcome) -> Option<u64>,
) -> Result<(), EngineError> {
    for (expected, outcome) in (start..).zip(outcomes) {
        if id(&outcome) != Some(expected) {
            return Err(EngineError::Populate { expected, got: format!("{outcome:?}") });
        }
    }
    Ok(())
}
