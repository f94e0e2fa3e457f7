//! Configuration reload without a restart; a broken file is ignored.

use std::time::Duration;

use gateway::Reloaded;

use crate::common::{Config, TestGateway, eventually, expect_problem, read};
use crate::upstreams::{Mode, TestUpstream};

fn config(a: &TestUpstream, b: &TestUpstream, pool: &str) -> Config {
    Config::new(
        &format!("a = [\"{}\"]\nb = [\"{}\"]", a.url(), b.url()),
        &format!(
            r#"
[[routes]]
prefix = "/api/app"
pool = "{pool}"
auth = "public"
"#
        ),
    )
}

async fn instance(gw: &TestGateway, path: &str) -> Option<String> {
    let (status, _, body) = read(gw.get(path, None).await).await;
    (status == 200).then(|| body["instance"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn a_changed_file_is_picked_up_and_a_broken_one_ignored() {
    let a = TestUpstream::start("a", Mode::Echo).await;
    let b = TestUpstream::start("b", Mode::Echo).await;
    let gw = TestGateway::start(&config(&a, &b, "a")).await;
    assert_eq!(instance(&gw, "/api/app/x").await.as_deref(), Some("a"));

    // Polled every 100 ms.
    gw.write_config(&config(&a, &b, "b").render());
    assert!(
        eventually(Duration::from_secs(3), || async {
            instance(&gw, "/api/app/x").await.as_deref() == Some("b")
        })
        .await,
        "the new route is live"
    );

    // A broken file: refused, the running configuration stays.
    gw.write_config("routes = [ this is not toml");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(instance(&gw, "/api/app/x").await.as_deref(), Some("b"));
    // Valid TOML naming an unknown pool is refused too.
    gw.write_config(&config(&a, &b, "nope").render());
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Seen (and refused) by the poller already: nothing new to apply.
    assert_eq!(gw.gateway.reload().await.ok(), Some(Reloaded::Unchanged));
    assert_eq!(instance(&gw, "/api/app/x").await.as_deref(), Some("b"));

    // A new route appears.
    let with_more = config(&a, &b, "b").render()
        + "\n[[routes]]\nprefix = \"/api/more\"\npool = \"a\"\nauth = \"public\"\n";
    gw.write_config(&with_more);
    assert!(
        eventually(Duration::from_secs(3), || async {
            instance(&gw, "/api/more/x").await.as_deref() == Some("a")
        })
        .await
    );
    expect_problem(gw.get("/api/none", None).await, 404).await;
}
