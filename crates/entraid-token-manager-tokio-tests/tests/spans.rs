//! The token manager's trace: one `entraid.token_request` span per request, with its
//! attempt number and outcome.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use entraid_identity::IdentityError;
use entraid_test_support::{ScriptedProvider, Step};
use entraid_token_manager::{TokenManager, TokenManagerConfig};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};

/// Every span's name and fields, as they were recorded.
#[derive(Default)]
struct Spans(Mutex<Vec<(&'static str, FieldValues)>>);

/// A span's fields, name and value, in the order they were recorded.
type FieldValues = Vec<(String, String)>;

/// A subscriber that keeps every span (and nothing else).
#[derive(Clone, Default)]
struct Recorder(Arc<Spans>);

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_owned(), value.to_owned()));
    }
}

impl tracing::Subscriber for Recorder {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut fields = Vec::new();
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.0.0.lock().unwrap();
        spans.push((attrs.metadata().name(), fields));
        Id::from_u64(spans.len() as u64)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut spans = self.0.0.lock().unwrap();
        if let Some((_, fields)) = spans.get_mut(span.into_u64() as usize - 1) {
            values.record(&mut Fields(fields));
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[test]
fn each_request_has_a_span_with_its_attempt_and_outcome() {
    let recorder = Recorder::default();
    let provider = ScriptedProvider::new(
        "oid-trace",
        [
            Step::Token(Duration::from_secs(10)),
            Step::Fail(IdentityError::transient("down")),
        ],
        Step::Token(Duration::from_secs(10)),
    );
    tracing::subscriber::with_default(recorder.clone(), || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let manager = TokenManager::start(provider.clone(), TokenManagerConfig::default()).unwrap();
            manager.token().await.unwrap();
            // The refresh at 7 s fails once, then the retry brings a token.
            tokio::time::sleep(Duration::from_secs(9)).await;
            assert_eq!(provider.calls(), 3);
        });
    });
    let spans = recorder.0.0.lock().unwrap();
    let requests: Vec<_> = spans
        .iter()
        .filter(|(name, _)| *name == "entraid.token_request")
        .map(|(_, fields)| {
            (
                field(fields, "attempt").map(str::to_owned),
                field(fields, "outcome").map(str::to_owned),
            )
        })
        .collect();
    let expected = [("1", "token"), ("1", "failed"), ("2", "token")];
    assert_eq!(requests.len(), 3, "{requests:?}");
    for ((attempt, outcome), (want_attempt, want_outcome)) in requests.iter().zip(expected) {
        assert_eq!(attempt.as_deref(), Some(want_attempt), "{requests:?}");
        assert_eq!(outcome.as_deref(), Some(want_outcome), "{requests:?}");
    }
}
