//! Pipeline specs for tests, over the bundled feature table and model.

use std::path::PathBuf;

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn demo_model() -> PathBuf {
    repo().join("models/propensity-v1.pt")
}

pub fn demo_features() -> PathBuf {
    repo().join("examples/features.csv")
}

/// The columns of the bundled feature table, in the model's order.
pub const DEMO_FEATURES: [&str; 7] = [
    "recency_days",
    "frequency_30d",
    "monetary_90d",
    "engagement_score",
    "email_opt_in",
    "loyalty_tier",
    "churn_risk",
];

/// `enrichment:` after its features: a miss scores with defaults for every demo feature.
pub const DEFAULTS_ON_MISS: &str = "  on_miss: default\n  defaults: {recency_days: 365, \
     frequency_30d: 0, monetary_90d: 0, engagement_score: 0.1, email_opt_in: 0, \
     loyalty_tier: 0, churn_risk: 0.5}";

/// A spec as YAML. Each block is YAML indented by two spaces, as under its section;
/// `lookup` defaults to the bundled feature table, `rest` holds whole top-level sections
/// (`batching:`, `checkpoint:`).
#[derive(Default)]
pub struct SpecYaml<'a> {
    pub name: &'a str,
    pub source: &'a str,
    /// `enrichment:` before its features; the bundled table when empty.
    pub lookup: &'a str,
    /// `enrichment:` after its features (`on_miss:`, `cache:`...).
    pub enrichment: &'a str,
    /// `model:` after its name, version and path.
    pub model: &'a str,
    pub sink: &'a str,
    pub dead_letter: &'a str,
    pub rest: &'a str,
}

impl SpecYaml<'_> {
    pub fn yaml(&self) -> String {
        let table = format!("  table:\n    path: {}", demo_features().display());
        let lookup = if self.lookup.is_empty() {
            &table
        } else {
            self.lookup
        };
        let mut yaml = format!("name: {}\nsource:\n", self.name);
        push_block(&mut yaml, self.source);
        yaml.push_str("enrichment:\n");
        push_block(&mut yaml, lookup);
        yaml.push_str(&format!("  features: [{}]\n", DEMO_FEATURES.join(", ")));
        push_block(&mut yaml, self.enrichment);
        yaml.push_str(&format!(
            "model:\n  name: propensity\n  version: \"1\"\n  path: {}\n",
            demo_model().display()
        ));
        push_block(&mut yaml, self.model);
        yaml.push_str("sink:\n");
        push_block(&mut yaml, self.sink);
        yaml.push_str("dead_letter:\n");
        push_block(&mut yaml, self.dead_letter);
        yaml.push_str(self.rest);
        yaml
    }
}

fn push_block(yaml: &mut String, block: &str) {
    if !block.trim().is_empty() {
        yaml.push_str(block.trim_end());
        yaml.push('\n');
    }
}
