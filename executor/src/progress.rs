//! Progress of long work, for people: a bar with the time left, and the rate on the line
//! under it, when standard error is a terminal (indicatif); plain lines otherwise, so that
//! logs and pipes stay one line per report.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::spec::{PipelineSpec, SourceSpec};

pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Progress towards `total` (none: unknown, a count and a rate only), counted in
    /// `unit`s.
    pub fn start(total: Option<u64>, unit: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let (bar, template) = match total {
            Some(total) => (
                ProgressBar::new(total),
                format!(
                    "{{elapsed_precise}} [{{wide_bar}}] {{human_pos}}/{{human_len}} {unit}  \
                     ETA {{eta}}\n{{wide_msg}}"
                ),
            ),
            None => (
                ProgressBar::new_spinner(),
                format!("{{elapsed_precise}} {{spinner}} {{human_pos}} {unit}\n{{wide_msg}}"),
            ),
        };
        // The templates are written here: a bad one is a bug of this file.
        bar.set_style(ProgressStyle::with_template(&template).expect("a valid progress template"));
        bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        Progress { bar: Some(bar) }
    }

    /// `done` so far, and a line saying more: under the bar on a terminal, printed as is
    /// elsewhere.
    pub fn show(&self, done: u64, line: impl FnOnce() -> String) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(done);
                bar.set_message(line());
            }
            None => eprintln!("{}", line()),
        }
    }

    /// The bar stays as it ended.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// `items` passed on as they are, their progress towards `total` shown at most once a
/// second (for work that hands an iterator on: producing, publishing).
pub fn counted<T>(
    items: impl Iterator<Item = T>,
    total: u64,
    unit: &'static str,
) -> impl Iterator<Item = T> {
    let progress = Progress::start(Some(total), unit);
    let started = std::time::Instant::now();
    let mut shown = started;
    let mut done = 0u64;
    items
        .map(Some)
        .chain(std::iter::once(None))
        .map_while(move |item| {
            if item.is_some() {
                done += 1;
            }
            let now = std::time::Instant::now();
            if item.is_none() || now.duration_since(shown).as_secs() >= 1 {
                shown = now;
                progress.show(done, || {
                    let secs = now.duration_since(started).as_secs_f64();
                    format!(
                        "  {secs:>6.1} s  {done:>10} {unit}  {:>9.0} {unit}/s",
                        done as f64 / secs.max(1e-9)
                    )
                });
                if item.is_none() {
                    progress.finish();
                }
            }
            item
        })
}

/// The records a pipeline's bounded source holds, when its spec says (a generator with an
/// event count); none for the others.
pub fn bounded_total(spec: &PipelineSpec) -> Option<u64> {
    match &spec.source {
        SourceSpec::Generator(generator) => generator
            .events
            .map(|events| events * u64::from(generator.partitions)),
        _ => None,
    }
}
