//! The one value every driver publishes to its subscribers: the current token and the
//! latest event. Shared by the drivers so they hand out exactly the same items.

use std::time::SystemTime;

use entraid_identity::Token;

use crate::error::TokenManagerError;
use crate::state_machine::Output;

/// What subscribers see. Only the latest snapshot is kept: a slow subscriber skips
/// intermediate events but always sees the newest token.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) token: Option<Token>,
    pub(crate) event: Event,
}

#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// Nothing has happened yet.
    Waiting,
    Renewed,
    Failed(TokenManagerError),
    Expired,
    Stopped,
}

impl Snapshot {
    pub(crate) const fn initial() -> Snapshot {
        Snapshot {
            token: None,
            event: Event::Waiting,
        }
    }

    /// Applies a state-machine output; `true` when subscribers must be told.
    pub(crate) fn apply(&mut self, output: Output) -> bool {
        match output {
            Output::TokenRenewed(token) => {
                self.token = Some(token);
                self.event = Event::Renewed;
            }
            Output::Error(failure) => self.event = Event::Failed(failure.into()),
            Output::TokenExpired => {
                self.token = None;
                self.event = Event::Expired;
            }
            Output::RequestToken(_) | Output::Timeout(_) | Output::NotStarted => return false,
        }
        true
    }

    pub(crate) fn stop(&mut self) {
        self.event = Event::Stopped;
    }

    /// The current token, unless the wall clock says it has expired: after a suspend the
    /// driver may not have noticed yet, and an expired token is never handed out.
    pub(crate) fn valid_token(&self) -> Option<&Token> {
        self.token
            .as_ref()
            .filter(|token| token.expires_at() > SystemTime::now())
    }

    /// What a new subscriber, or a caller waiting for a token, gets now: the current
    /// token if there is one, else the reason there is none, else nothing yet.
    pub(crate) fn first_item(&self) -> Option<Result<Token, TokenManagerError>> {
        match (&self.token, &self.event) {
            (_, Event::Stopped) => Some(Err(TokenManagerError::Stopped)),
            (Some(_), _) if self.valid_token().is_none() => Some(Err(TokenManagerError::TokenExpired)),
            (Some(token), _) => Some(Ok(token.clone())),
            (None, Event::Failed(error)) => Some(Err(error.clone())),
            (None, Event::Expired) => Some(Err(TokenManagerError::TokenExpired)),
            (None, Event::Waiting | Event::Renewed) => None,
        }
    }

    /// What a subscriber gets when the snapshot changes.
    pub(crate) fn change_item(&self) -> Option<Result<Token, TokenManagerError>> {
        match &self.event {
            Event::Renewed => self.token.clone().map(Ok),
            Event::Failed(error) => Some(Err(error.clone())),
            Event::Expired => Some(Err(TokenManagerError::TokenExpired)),
            Event::Stopped => Some(Err(TokenManagerError::Stopped)),
            Event::Waiting => None,
        }
    }

    pub(crate) fn is_stopped(&self) -> bool {
        matches!(self.event, Event::Stopped)
    }
}
