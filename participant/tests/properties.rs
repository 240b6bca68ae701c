//! Random interleavings of Tries, repeats, confirms, cancels, expiry and the sweeper over short
//! holds, on a real PostgreSQL, at READ COMMITTED and at REPEATABLE READ (where concurrent
//! decisions meet serialization failures, which the library retries: a 503 fails the test). After
//! every round:
//! available + held + sold is the stock; what is held is what the reservations still hold; what
//! is sold is what was confirmed, once each. At the end every hold has lapsed and is returned.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use reqwest::Method;
use serde_json::json;
use tcc_participant::IsolationLevel;

use crate::common::*;

const STOCK: i64 = 10;
const HOLD: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
enum Op {
    Try { slot: u8, quantity: i64 },
    Confirm { slot: u8 },
    Cancel { slot: u8 },
    Sweep,
    Pause,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, 1i64..4).prop_map(|(slot, quantity)| Op::Try { slot, quantity }),
        3 => (0u8..6).prop_map(|slot| Op::Confirm { slot }),
        2 => (0u8..6).prop_map(|slot| Op::Cancel { slot }),
        1 => Just(Op::Sweep),
        1 => Just(Op::Pause),
    ]
}

/// Rounds of operations; the operations of a round run at once.
fn rounds() -> impl Strategy<Value = Vec<Vec<Op>>> {
    prop::collection::vec(prop::collection::vec(op(), 1..5), 1..10)
}

/// What the table says of `sku`'s reservations: (held by those still reserved, sold by the
/// confirmed ones).
async fn ledger(shop: &Shop, sku: &str) -> (i64, i64) {
    let client = shop.pool.get().await.expect("a connection");
    let row = client
        .query_one(
            "SELECT
                 coalesce(sum((data->>'quantity')::bigint)
                     FILTER (WHERE state = 'reserved'), 0)::bigint,
                 coalesce(sum((data->>'quantity')::bigint)
                     FILTER (WHERE state = 'confirmed'), 0)::bigint
             FROM tcc_reservations WHERE subject = $1",
            &[&sku],
        )
        .await
        .expect("the ledger");
    (row.get(0), row.get(1))
}

async fn check_invariants(shop: &Shop, sku: &str) -> Result<(), String> {
    let stock = shop.item(sku).await;
    let (held, sold) = ledger(shop, sku).await;
    if stock.available + stock.held + stock.sold != STOCK {
        return Err(format!("units appeared or vanished: {stock:?}"));
    }
    if (stock.held, stock.sold) != (held, sold) {
        return Err(format!(
            "the stock {stock:?} is not what the reservations say (held {held}, sold {sold})"
        ));
    }
    Ok(())
}

async fn run_case(shop: &Shop, rounds: Vec<Vec<Op>>) -> Result<(), String> {
    let sku = format!("sku-{}", uuid::Uuid::new_v4().simple());
    let order = format!("order-{}", uuid::Uuid::new_v4().simple());
    shop.stock(&sku, STOCK).await;
    let mut links: HashMap<u8, String> = HashMap::new();
    for round in rounds {
        let known = links.clone();
        let calls = round.iter().map(|op| {
            let (sku, order, known) = (&sku, &order, &known);
            async move {
                match op {
                    Op::Try { slot, quantity } => {
                        let ids = (order.as_str(), &*format!("slot-{slot}"));
                        let (status, body) = shop
                            .hold(sku, ids, &json!({ "quantity": quantity }), None)
                            .await;
                        if ![201, 409, 422].contains(&status) {
                            return Err(format!("a Try answered {status}: {body}"));
                        }
                        Ok((status == 201).then(|| (*slot, link_of(&body))))
                    }
                    Op::Confirm { slot } | Op::Cancel { slot } => {
                        let Some(link) = known.get(slot) else {
                            return Ok(None);
                        };
                        let (method, allowed) = match op {
                            Op::Confirm { .. } => (Method::PUT, &[204, 404][..]),
                            _ => (Method::DELETE, &[204, 404, 409][..]),
                        };
                        let status = shop.call(method.clone(), link).await;
                        if !allowed.contains(&status) {
                            return Err(format!("{method} on a link answered {status}"));
                        }
                        Ok(None)
                    }
                    Op::Sweep => {
                        // A sweep may lose to a busy database at REPEATABLE READ; the next runs.
                        let _ = shop.participant.sweep().await;
                        Ok(None)
                    }
                    Op::Pause => {
                        // Time passing is the scenario here: holds lapse.
                        tokio::time::sleep(HOLD / 2).await;
                        Ok(None)
                    }
                }
            }
        });
        for outcome in futures::future::join_all(calls).await {
            if let Some((slot, link)) = outcome? {
                links.insert(slot, link);
            }
        }
        check_invariants(shop, &sku).await?;
    }
    // In the end every hold lapses and the sweeper returns it.
    let settled = eventually(|| async {
        let _ = shop.participant.sweep().await;
        shop.item(&sku).await.held == 0
    })
    .await;
    if !settled {
        return Err("holds were never returned".into());
    }
    check_invariants(shop, &sku).await
}

fn interleavings(isolation: IsolationLevel) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let shop = runtime.block_on(shop_with(HOLD, |c| {
        c.isolation = isolation;
        c.attempts = 10;
    }));
    let config = ProptestConfig {
        cases: 12,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(plan in rounds())| {
        let outcome = runtime.block_on(run_case(&shop, plan));
        prop_assert!(outcome.is_ok(), "{}", outcome.err().unwrap_or_default());
    });
}

#[test]
fn the_stock_adds_up_under_any_interleaving() {
    interleavings(IsolationLevel::ReadCommitted);
}

#[test]
fn the_stock_adds_up_under_any_interleaving_at_repeatable_read() {
    interleavings(IsolationLevel::RepeatableRead);
}
