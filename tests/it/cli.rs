//! The CLI's own conventions: `hxo man`, and (below) what `--json` prints.

use crate::support::*;

#[test]
fn hxo_man_prints_a_roff_page_naming_the_subcommands() {
    let output = Sandbox::new().run(&["man"]);
    assert_code(&output, 0);
    let page = stdout(&output);
    assert!(page.contains(".TH hxo"), "{page}");
    // roff escapes the dash: subcommands appear as `hxo\-run(1)`.
    for name in ["run", "proof", "events", "plans", "completions", "man"] {
        assert!(
            page.contains(&format!("hxo\\-{name}(1)")),
            "no {name} in:\n{page}"
        );
    }
}
