//! Rendering an error with its sources: a leaf that both the loader and the
//! authorizer use, so neither imports the other for it.

/// An error and its sources, `: `-joined. Cedar often keeps the useful part
/// (which attribute, which value) in a source, not in the top message.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        // Some errors repeat their source in their own message.
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner detail")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("wrapped: inner detail")]
    struct Repeats(#[source] Inner);

    #[test]
    fn joins_sources_and_skips_repeats() {
        assert_eq!(chain(&Outer(Inner)), "outer: inner detail");
        assert_eq!(chain(&Repeats(Inner)), "wrapped: inner detail");
    }
}
