//! The documentation's examples work: the minimal participant of docs/participant.md, run as it
//! is written, takes part in jobs that complete and jobs that are canceled.

use serde_json::json;

use crate::helpers::*;

/// The Python participant of docs/participant.md, on `port` instead of 9000.
fn documented_participant(port: u16) -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/participant.md"))
        .expect("docs/participant.md");
    let start = doc.find("```python\n").expect("a python block") + "```python\n".len();
    let len = doc[start..].find("```").expect("the end of the block");
    doc[start..start + len].replace("9000", &port.to_string())
}

#[tokio::test]
async fn the_minimal_participant_of_the_docs_completes_and_cancels() {
    let port = free_port();
    let file = std::env::temp_dir().join(format!("seats-{port}.py"));
    std::fs::write(&file, documented_participant(port)).expect("write the participant");
    let _seats = Daemon(
        std::process::Command::new("python3")
            .arg(&file)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3"),
    );
    let up = eventually(|| async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    assert!(up, "the documented participant never listened");
    let app = spawn_app().await;
    let task_url = format!("http://127.0.0.1:{port}/reservations");
    let done = app
        .submit(
            &json!({"tasks": [{"taskID": "seat", "taskURL": task_url, "body": {"seat": "12A"}}]}),
        )
        .await;
    let job = app.wait_status(&done, "completed").await;
    assert_eq!(task(&job, "seat")["taskStatus"], "confirmed", "{job}");
    // Reserved, then canceled by the client: the participant answers the cancel.
    let open = app
        .submit(&json!({"autoConfirm": false, "tasks": [{"taskID": "seat", "taskURL": task_url}]}))
        .await;
    app.wait_status(&open, "reserved").await;
    let r = app.delete(&format!("/jobs/{open}")).await;
    assert_eq!(r.status(), 202);
    let job = app.wait_status(&open, "canceled").await;
    assert_eq!(task(&job, "seat")["taskStatus"], "canceled", "{job}");
    let _ = std::fs::remove_file(&file);
    app.stop().await;
}
