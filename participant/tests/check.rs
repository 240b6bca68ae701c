//! The coordinator's checker (`tcc-coordinator check-participant`) against `inventory`: every
//! rule passes, and nothing is left held.

use std::time::Duration;

use serde_json::json;
use tcc_coordinator::check::{CheckOptions, Outcome, check};

use crate::common::*;

#[tokio::test]
async fn inventory_keeps_every_rule_the_checker_knows() {
    // Short holds, so that the rule on a confirm after expiry runs too.
    let shop = shop_with(Duration::from_secs(2), |_| {}).await;
    shop.stock("pen", 1000).await;
    let mut options = CheckOptions::new(format!("{}/items/pen/holds", shop.url));
    options.body = json!({"quantity": 1});
    let report = check(&options).await.expect("the check runs");
    for finding in &report.findings {
        assert_eq!(
            finding.outcome,
            Outcome::Pass,
            "{}: {}",
            finding.rule,
            finding.detail
        );
    }
    assert_eq!(report.findings.len(), 13, "{:?}", report.failed_rules());
    assert!(report.unreleased.is_empty(), "{:?}", report.unreleased);
    // What it confirmed is sold; everything else went back.
    let left = eventually(|| async {
        let _ = shop.participant.sweep().await;
        shop.item("pen").await.held == 0
    })
    .await;
    assert!(left, "nothing is left held");
    let stock = shop.item("pen").await;
    assert_eq!(stock.available + stock.sold, 1000);
}
