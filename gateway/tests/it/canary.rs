//! Canary split: by header, by share (sticky per user), and falling back when the canary is
//! down.

use std::time::Duration;

use crate::common::{Config, TestGateway, eventually, read};
use crate::upstreams::{Mode, TestUpstream};

async fn setup(percent: u8) -> (TestGateway, TestUpstream, TestUpstream) {
    let stable = TestUpstream::start("stable", Mode::Echo).await;
    let canary = TestUpstream::start("canary", Mode::Echo).await;
    let config = Config::new(
        &format!(
            "stable = [\"{}\"]\ncanary = [\"{}\"]",
            stable.url(),
            canary.url()
        ),
        &format!(
            r#"
[[routes]]
prefix = "/api/app"
pool = "stable"
auth = "public"
[routes.canary]
pool = "canary"
percent = {percent}
header = "x-canary"
"#
        ),
    );
    (TestGateway::start(&config).await, stable, canary)
}

async fn instance(gw: &TestGateway, token: Option<&str>, canary_header: Option<&str>) -> String {
    let mut request = gw.http.get(gw.url("/api/app/x"));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    if let Some(h) = canary_header {
        request = request.header("x-canary", h);
    }
    let (status, _, body) = read(request.send().await.expect("get")).await;
    assert_eq!(status, 200);
    body["instance"].as_str().expect("instance").to_owned()
}

#[tokio::test]
async fn the_header_forces_the_canary_either_way() {
    let (gw, _stable, _canary) = setup(0).await;
    for _ in 0..5 {
        assert_eq!(instance(&gw, None, None).await, "stable");
        assert_eq!(instance(&gw, None, Some("1")).await, "canary");
        assert_eq!(instance(&gw, None, Some("always")).await, "canary");
    }
    let (gw, _stable, _canary) = setup(100).await;
    assert_eq!(instance(&gw, None, None).await, "canary");
    assert_eq!(instance(&gw, None, Some("false")).await, "stable");
}

#[tokio::test]
async fn a_share_of_users_goes_to_the_canary_and_stays_there() {
    let (gw, stable, canary) = setup(30).await;
    let mut on_canary = 0;
    for i in 0..40 {
        let token = gw.token(&format!("user{i}")).await;
        let first = instance(&gw, Some(&token), None).await;
        for _ in 0..2 {
            assert_eq!(instance(&gw, Some(&token), None).await, first, "sticky");
        }
        if first == "canary" {
            on_canary += 1;
        }
    }
    assert!((3..=25).contains(&on_canary), "{on_canary} of 40 users");
    assert_eq!(stable.hits() + canary.hits(), 120);
}

#[tokio::test]
async fn a_dead_canary_falls_back_to_the_stable_pool() {
    let (gw, _stable, mut canary) = setup(100).await;
    canary.kill().await;
    let runtime = gw.gateway.runtime();
    assert!(
        eventually(Duration::from_secs(2), || async {
            runtime.upstreams.iter().any(|u| u.is_ejected())
        })
        .await
    );
    for _ in 0..5 {
        assert_eq!(instance(&gw, None, None).await, "stable");
    }
}
