//! Each answer of the contract, as the coordinator (or anyone) sees it over HTTP, with the
//! stock that `inventory` keeps as the service's own effect.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::*;

#[tokio::test]
async fn a_try_needs_its_ids_and_a_readable_deadline() {
    let shop = shop().await;
    shop.stock("pen", 5).await;
    let q = json!({"quantity": 1});
    for (ids, missing) in [(("", "r1"), "correlation-id"), (("c1", " "), "request-id")] {
        let (status, problem) = shop.hold("pen", ids, &q, None).await;
        assert_eq!(status, 400, "{problem:#}");
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains(missing)),
            "{problem:#}"
        );
    }
    let (status, problem) = shop.hold("pen", ("c1", "r1"), &q, Some("tomorrow")).await;
    assert_eq!(status, 400);
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("tcc-deadline"))
    );
    let (status, _) = shop
        .hold("pen", ("c1", "r1"), &json!({"quantity": 0}), None)
        .await;
    assert_eq!(status, 422, "the service finds the body invalid");
    // What the database could not store is refused before it is tried.
    let nul = json!({"quantity": 1, "note": "a\u{0}b"});
    let (status, problem) = shop.hold("pen", ("c1", "r1"), &nul, None).await;
    assert_eq!(status, 400, "{problem:#}");
    let long = "r".repeat(300);
    let (status, problem) = shop.hold("pen", ("c1", &long), &q, None).await;
    assert_eq!(status, 400, "{problem:#}");
    assert_eq!(
        shop.item("pen").await,
        Stock {
            available: 5,
            held: 0,
            sold: 0
        },
        "nothing held"
    );
    // Refused for a bad body, nothing was kept: the same ids may now carry a good one.
    let (status, _) = shop.hold("pen", ("c1", "r1"), &q, None).await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn a_repeat_is_answered_as_the_first_whatever_happened_since() {
    let shop = shop().await;
    shop.stock("pen", 10).await;
    let ids = ("order-7", "pen-hold");
    let first = shop
        .hold(
            "pen",
            ids,
            &json!({"quantity": 3, "note": {"a": 1, "b": 2}}),
            None,
        )
        .await;
    assert_eq!(first.0, 201, "{:#}", first.1);
    let link = link_of(&first.1);
    assert!(link.starts_with(&format!("{}/reservations/", shop.url)));
    let expires = chrono::DateTime::parse_from_rfc3339(
        first.1["participantLink"]["expires"]
            .as_str()
            .expect("expires"),
    )
    .expect("RFC 3339");
    assert!(expires > chrono::Utc::now());
    // The same request, its members in another order: the same answer, nothing more held.
    let again = shop
        .hold(
            "pen",
            ids,
            &json!({"note": {"b": 2, "a": 1}, "quantity": 3}),
            None,
        )
        .await;
    assert_eq!(again, first);
    assert_eq!(
        shop.item("pen").await,
        Stock {
            available: 7,
            held: 3,
            sold: 0
        }
    );
    // Another body, or another item, under the same ids: 422, nothing changed.
    for (sku, body) in [
        ("pen", json!({"quantity": 4})),
        ("ink", json!({"quantity": 3})),
    ] {
        let (status, problem) = shop.hold(sku, ids, &body, None).await;
        assert_eq!(status, 422, "{problem:#}");
    }
    assert_eq!(
        shop.item("pen").await,
        Stock {
            available: 7,
            held: 3,
            sold: 0
        }
    );
    // After the confirm, a repeat still answers the same link and expiry.
    assert_eq!(shop.call(Method::PUT, &link).await, 204);
    let late = shop
        .hold(
            "pen",
            ids,
            &json!({"quantity": 3, "note": {"a": 1, "b": 2}}),
            None,
        )
        .await;
    assert_eq!(late, first);
    assert_eq!(
        shop.item("pen").await,
        Stock {
            available: 7,
            held: 0,
            sold: 3
        }
    );
}

#[tokio::test]
async fn a_refusal_is_kept_and_replayed() {
    let shop = shop().await;
    shop.stock("pen", 2).await;
    let ids = ("order-8", "too-many");
    let (status, problem) = shop.hold("pen", ids, &json!({"quantity": 5}), None).await;
    assert_eq!(status, 409);
    let message = problem["detail"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("only 2 of pen"), "{message}");
    // Stock arrives; the repeat is still the refusal, and holds nothing.
    shop.stock("pen", 50).await;
    let (status, again) = shop.hold("pen", ids, &json!({"quantity": 5}), None).await;
    assert_eq!(
        (status, again["detail"].as_str()),
        (409, Some(message.as_str()))
    );
    assert_eq!(
        shop.item("pen").await,
        Stock {
            available: 50,
            held: 0,
            sold: 0
        }
    );
}

#[tokio::test]
async fn a_try_after_its_deadline_holds_and_stores_nothing() {
    let shop = shop().await;
    shop.stock("pen", 4).await;
    let ids = ("order-9", "late");
    let past = (chrono::Utc::now() - chrono::Duration::seconds(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (status, problem) = shop
        .hold("pen", ids, &json!({"quantity": 1}), Some(&past))
        .await;
    assert_eq!(status, 409, "{problem:#}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("tcc-deadline"))
    );
    assert_eq!(
        shop.item("pen").await,
        Stock {
            available: 4,
            held: 0,
            sold: 0
        }
    );
    // Nothing was stored: the same ids in time reserve.
    let future = (chrono::Utc::now() + chrono::Duration::seconds(30))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (status, _) = shop
        .hold("pen", ids, &json!({"quantity": 1}), Some(&future))
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        shop.item("pen").await,
        Stock {
            available: 3,
            held: 1,
            sold: 0
        }
    );
}

#[tokio::test]
async fn concurrent_repeats_make_one_reservation() {
    let shop = shop().await;
    shop.stock("pen", 100).await;
    let two = json!({"quantity": 2});
    let calls = (0..16).map(|_| shop.hold("pen", ("order-10", "rush"), &two, None));
    let answers = futures::future::join_all(calls).await;
    let links: std::collections::HashSet<String> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 201, "{body:#}");
            link_of(body)
        })
        .collect();
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(
        shop.item("pen").await,
        Stock {
            available: 98,
            held: 2,
            sold: 0
        }
    );
}

#[tokio::test]
async fn confirm_and_cancel_are_each_applied_once() {
    let shop = shop().await;
    shop.stock("pen", 10).await;
    let sold = shop.held("pen", "a", 2).await;
    assert_eq!(shop.call(Method::PUT, &sold).await, 204);
    assert_eq!(shop.call(Method::PUT, &sold).await, 204, "a repeat");
    assert_eq!(shop.call(Method::DELETE, &sold).await, 409, "confirmed");
    assert_eq!(shop.state(&sold).await["state"], "confirmed");

    let returned = shop.held("pen", "b", 3).await;
    assert_eq!(shop.call(Method::DELETE, &returned).await, 204);
    assert_eq!(shop.call(Method::DELETE, &returned).await, 204, "a repeat");
    assert_eq!(shop.call(Method::PUT, &returned).await, 404, "canceled");
    assert_eq!(shop.state(&returned).await["state"], "canceled");
    assert_eq!(
        shop.item("pen").await,
        Stock {
            available: 8,
            held: 0,
            sold: 2
        }
    );

    let unknown = format!("{}/reservations/{}", shop.url, "0".repeat(32));
    for method in [Method::PUT, Method::DELETE, Method::GET] {
        assert_eq!(shop.call(method.clone(), &unknown).await, 404, "{method}");
    }
}

#[tokio::test]
async fn a_lapsed_reservation_is_released_once_by_whoever_comes_first() {
    let shop = shop_with(Duration::from_millis(300), |_| {}).await;
    shop.stock("pen", 10).await;
    let late_confirm = shop.held("pen", "a", 1).await;
    let late_cancel = shop.held("pen", "b", 2).await;
    let swept = shop.held("pen", "c", 3).await;
    assert_eq!(shop.item("pen").await.held, 6);
    let lapsed = eventually(|| async { shop.state(&swept).await["state"] == "expired" }).await;
    assert!(lapsed, "a reservation shows expired once its time is past");
    // The confirm after expiry is refused, and releases it then and there; so does a cancel.
    assert_eq!(shop.call(Method::PUT, &late_confirm).await, 404);
    assert_eq!(shop.call(Method::DELETE, &late_cancel).await, 404);
    assert_eq!(
        shop.item("pen").await,
        Stock {
            available: 7,
            held: 3,
            sold: 0
        }
    );
    // The sweeper releases the last one, once.
    let run = shop.participant.sweep().await.expect("a sweep");
    assert_eq!(run.expired, 1);
    assert_eq!(shop.participant.sweep().await.expect("a sweep").expired, 0);
    assert_eq!(
        shop.item("pen").await,
        Stock {
            available: 10,
            held: 0,
            sold: 0
        }
    );
    assert_eq!(shop.call(Method::PUT, &swept).await, 404);
}

#[tokio::test]
async fn confirm_and_cancel_racing_on_every_reservation_decide_each_once() {
    let shop = shop().await;
    shop.stock("pen", 40).await;
    let mut links = Vec::new();
    for i in 0..20 {
        links.push(shop.held("pen", &format!("r{i}"), 2).await);
    }
    let races = links.iter().map(|link| async {
        let (confirm, cancel) = tokio::join!(
            shop.call(Method::PUT, link),
            shop.call(Method::DELETE, link)
        );
        (confirm, cancel)
    });
    let mut sold = 0;
    for (confirm, cancel) in futures::future::join_all(races).await {
        match (confirm, cancel) {
            (204, 409) => sold += 2,
            (404, 204) => {}
            other => panic!("confirm and cancel answered {other:?}"),
        }
    }
    assert_eq!(
        shop.item("pen").await,
        Stock {
            available: 40 - sold,
            held: 0,
            sold
        }
    );
}

#[tokio::test]
async fn settled_reservations_are_purged_after_the_retention() {
    let shop = shop_with(Duration::from_secs(60), |c| c.retention = Duration::ZERO).await;
    shop.stock("pen", 10).await;
    let link = shop.held("pen", "a", 1).await;
    let open = shop.held("pen", "b", 1).await;
    assert_eq!(shop.call(Method::PUT, &link).await, 204);
    let purged =
        eventually(|| async { shop.participant.sweep().await.is_ok_and(|s| s.purged == 1) }).await;
    assert!(purged);
    assert_eq!(shop.call(Method::GET, &link).await, 404, "purged");
    assert_eq!(
        shop.state(&open).await["state"],
        "reserved",
        "a held one stays"
    );
}

#[tokio::test]
async fn without_its_database_a_participant_answers_503_and_does_nothing() {
    // A pool whose server is not there.
    let pool =
        tcc_participant::pool("host=127.0.0.1 port=1 user=nobody dbname=none", 2).expect("a pool");
    let mut config = tcc_participant::Config::new("http://127.0.0.1:9");
    config.db_timeout = Duration::from_secs(2);
    let p = tcc_participant::Participant::new(pool, service::Inventory, config);
    let answer = p
        .reserve(tcc_participant::TryCall {
            correlation_id: Some("c"),
            request_id: Some("r"),
            deadline: None,
            subject: "pen",
            body: br#"{"quantity": 1}"#,
        })
        .await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.retry_after, Some(1));
    for answer in [
        p.confirm("x").await,
        p.cancel("x").await,
        p.state("x").await,
    ] {
        assert_eq!(answer.status, 503);
    }
    assert!(p.sweep().await.is_err());
    let _: Value = answer.body.unwrap_or_default();
}

#[tokio::test]
async fn a_reservation_the_service_cannot_release_does_not_hold_up_the_others() {
    let shop = shop_with(Duration::from_millis(300), |_| {}).await;
    shop.stock("pen", 10).await;
    shop.stock("ink", 10).await;
    let stuck = shop.held("pen", "a", 2).await;
    let fine = shop.held("ink", "b", 3).await;
    // Someone set the pens' books wrong by hand: giving the hold back breaks `held >= 0`.
    shop.pool
        .get()
        .await
        .expect("a connection")
        .execute("UPDATE inventory_items SET held = 0 WHERE sku = 'pen'", &[])
        .await
        .expect("the books changed");
    let lapsed = eventually(|| async {
        shop.state(&stuck).await["state"] == "expired"
            && shop.state(&fine).await["state"] == "expired"
    })
    .await;
    assert!(lapsed);
    let run = shop.participant.sweep().await.expect("the sweep runs");
    assert_eq!(run.expired, 1, "the other one is released");
    assert_eq!(
        shop.item("ink").await,
        Stock {
            available: 10,
            held: 0,
            sold: 0
        }
    );
    // The stuck one is left for the next run, still held in the table.
    let client = shop.pool.get().await.expect("a connection");
    let row = client
        .query_one(
            "SELECT state FROM tcc_reservations WHERE subject = 'pen'",
            &[],
        )
        .await
        .expect("the stuck reservation");
    assert_eq!(row.get::<_, String>(0), "reserved");
}

#[tokio::test]
async fn a_repeat_after_a_cancel_or_an_expiry_still_answers_the_first_link() {
    let shop = shop_with(Duration::from_millis(300), |_| {}).await;
    shop.stock("pen", 10).await;
    let one = json!({"quantity": 1});
    let canceled = shop.hold("pen", ("order-11", "c"), &one, None).await;
    let lapsed = shop.hold("pen", ("order-11", "l"), &one, None).await;
    assert_eq!(shop.call(Method::DELETE, &link_of(&canceled.1)).await, 204);
    let swept = eventually(|| async {
        let _ = shop.participant.sweep().await;
        shop.item("pen").await.held == 0
    })
    .await;
    assert!(swept);
    assert_eq!(shop.state(&link_of(&lapsed.1)).await["state"], "expired");
    assert_eq!(
        shop.state(&link_of(&lapsed.1)).await["expires"],
        lapsed.1["participantLink"]["expires"]
    );
    for (ids, first) in [(("order-11", "c"), &canceled), (("order-11", "l"), &lapsed)] {
        assert_eq!(&shop.hold("pen", ids, &one, None).await, first, "{ids:?}");
    }
    assert_eq!(
        shop.item("pen").await,
        Stock {
            available: 10,
            held: 0,
            sold: 0
        }
    );
}

#[tokio::test]
async fn the_outcomes_are_counted_for_the_services_own_metrics() {
    let handle = metrics_handle();
    let shop = shop().await;
    shop.stock("pen", 1).await;
    let link = shop.held("pen", "m", 1).await;
    assert_eq!(shop.call(Method::PUT, &link).await, 204);
    let (status, _) = shop
        .hold("pen", ("order-1", "n"), &json!({"quantity": 5}), None)
        .await;
    assert_eq!(status, 409);
    let text = handle.render();
    for outcome in ["reserved", "confirmed", "refused"] {
        let line = format!("tcc_participant_reservations_total{{outcome=\"{outcome}\"}}");
        assert!(text.contains(&line), "{line} in\n{text}");
    }
}
