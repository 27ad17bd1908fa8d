//! An identity provider that plays a script.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use entraid_identity::{IdentityError, IdentityProvider, Token};

use crate::jwt::token_with_lifetime;

/// One answer of a [`ScriptedProvider`].
#[derive(Debug, Clone)]
pub enum Step {
    /// A new, unique token with this lifetime.
    Token(Duration),
    /// The token handed out last, again (as a caching provider would).
    SameToken,
    /// This error.
    Fail(IdentityError),
    /// Waits (on tokio's clock, so paused time applies), then plays the inner step.
    #[cfg(feature = "tokio")]
    Delay(Duration, Box<Step>),
    /// Never answers.
    Hang,
    /// Panics.
    Panic,
}

/// Plays its script one step per request; when the script runs out it repeats `then`.
/// Counts requests. Clones share the script and the counters.
#[derive(Debug, Clone)]
pub struct ScriptedProvider {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    oid: String,
    script: Mutex<VecDeque<Step>>,
    then: Mutex<Step>,
    calls: AtomicU64,
    issued: AtomicU64,
    last: Mutex<Option<Token>>,
}

impl ScriptedProvider {
    /// Plays `script`, then `then` for ever, issuing tokens for `oid`.
    pub fn new(oid: &str, script: impl IntoIterator<Item = Step>, then: Step) -> ScriptedProvider {
        ScriptedProvider {
            inner: Arc::new(Inner {
                oid: oid.to_owned(),
                script: Mutex::new(script.into_iter().collect()),
                then: Mutex::new(then),
                calls: AtomicU64::new(0),
                issued: AtomicU64::new(0),
                last: Mutex::new(None),
            }),
        }
    }

    /// Always issues tokens of this lifetime.
    pub fn always(oid: &str, lifetime: Duration) -> ScriptedProvider {
        Self::new(oid, [], Step::Token(lifetime))
    }

    /// Always fails with this error.
    pub fn failing(error: IdentityError) -> ScriptedProvider {
        Self::new("unused", [], Step::Fail(error))
    }

    /// Replaces what is played once the script runs out (for example to recover after an
    /// outage), and clears what is left of the script.
    pub fn set_then(&self, then: Step) {
        lock(&self.inner.script).clear();
        *lock(&self.inner.then) = then;
    }

    /// Appends steps to the script.
    pub fn push(&self, steps: impl IntoIterator<Item = Step>) {
        lock(&self.inner.script).extend(steps);
    }

    /// Requests received so far.
    pub fn calls(&self) -> u64 {
        self.inner.calls.load(Ordering::SeqCst)
    }

    /// Tokens issued so far (not counting repeats).
    pub fn issued(&self) -> u64 {
        self.inner.issued.load(Ordering::SeqCst)
    }

    /// The last token handed out.
    pub fn last_token(&self) -> Option<Token> {
        lock(&self.inner.last).clone()
    }

    fn next_step(&self) -> Step {
        lock(&self.inner.script)
            .pop_front()
            .unwrap_or_else(|| lock(&self.inner.then).clone())
    }

    async fn play(&self, step: Step) -> Result<Token, IdentityError> {
        #[cfg_attr(not(feature = "tokio"), allow(unused_mut))]
        let mut step = step;
        loop {
            match step {
                Step::Token(lifetime) => {
                    let jti = self.inner.issued.fetch_add(1, Ordering::SeqCst);
                    let token = token_with_lifetime(&self.inner.oid, lifetime, jti);
                    *lock(&self.inner.last) = Some(token.clone());
                    return Ok(token);
                }
                Step::SameToken => {
                    return lock(&self.inner.last)
                        .clone()
                        .ok_or_else(|| IdentityError::permanent("script error: SameToken before any token"));
                }
                Step::Fail(error) => return Err(error),
                #[cfg(feature = "tokio")]
                Step::Delay(by, then) => {
                    tokio::time::sleep(by).await;
                    step = *then;
                }
                Step::Hang => std::future::pending::<()>().await,
                Step::Panic => panic!("scripted provider panic"),
            }
        }
    }
}

#[async_trait::async_trait]
impl IdentityProvider for ScriptedProvider {
    async fn request_token(&self) -> Result<Token, IdentityError> {
        self.inner.calls.fetch_add(1, Ordering::SeqCst);
        let step = self.next_step();
        self.play(step).await
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
