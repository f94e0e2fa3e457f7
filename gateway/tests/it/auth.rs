//! Auth: login, every kind of bad token (401 with a Bearer challenge), forged identity headers.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::common::{ADMIN_PASSWORD, Config, SECRET, TestGateway, expect_problem, read};
use crate::upstreams::{Mode, TestUpstream};

async fn setup() -> (TestGateway, TestUpstream) {
    let upstream = TestUpstream::start("app", Mode::Echo).await;
    let config = Config::new(
        &format!("app = [\"{}\"]", upstream.url()),
        r#"
[[routes]]
prefix = "/api/private"
rewrite = "/private"
pool = "app"
auth = "user"

[[routes]]
prefix = "/api/public"
rewrite = "/public"
pool = "app"
auth = "public"
"#,
    );
    (TestGateway::start(&config).await, upstream)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn claims(exp: u64) -> Value {
    json!({"sub": "alice", "role": "user", "iss": "seckill-gateway", "iat": now(), "exp": exp})
}

fn sign(alg: Algorithm, secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

/// base64url without padding.
fn b64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// A token with a hand-written header (and any signature).
fn forge(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

#[tokio::test]
async fn login_issues_user_and_admin_tokens_that_open_protected_routes() {
    let (gw, upstream) = setup().await;
    let response = gw.post_login(&json!({"user": "alice"})).await;
    let (status, _, body) = read(response).await;
    assert_eq!(status, 200);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["role"], "user");
    assert_eq!(body["expires_in"], 3600);
    let token = body["access_token"].as_str().expect("token").to_owned();

    let (status, _, echo) = read(gw.get("/api/private/x", Some(&token)).await).await;
    assert_eq!(status, 200);
    assert_eq!(echo["headers"]["x-user-id"], "alice");
    assert_eq!(echo["headers"]["x-user-role"], "user");
    assert!(
        echo["headers"].get("authorization").is_none(),
        "the token stays at the gateway"
    );

    let admin = gw.admin_token().await;
    let (_, _, echo) = read(gw.get("/api/private/x", Some(&admin)).await).await;
    assert_eq!(echo["headers"]["x-user-role"], "admin");

    for bad in [
        json!({"user": "admin"}),
        json!({"user": "admin", "password": "wrong"}),
        json!({"user": "admin", "password": format!("{ADMIN_PASSWORD} ")}),
    ] {
        let r = gw.post_login(&bad).await;
        let problem = expect_problem(r, 401).await;
        assert_eq!(problem["type"], "/problems/login-refused");
    }
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn every_bad_token_is_a_401_with_a_bearer_challenge() {
    let (gw, upstream) = setup().await;
    let valid = claims(now() + 600);
    let hs256_header = json!({"alg": "HS256", "typ": "JWT"});
    let good = sign(Algorithm::HS256, SECRET, &valid);
    let good_signature = good.rsplit('.').next().expect("signature").to_owned();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        (
            "expired",
            Some(sign(Algorithm::HS256, SECRET, &claims(now() - 5))),
        ),
        (
            "wrong signature",
            Some(sign(
                Algorithm::HS256,
                "some-other-secret-some-other-secret!!",
                &valid,
            )),
        ),
        (
            "alg none",
            Some(forge(&json!({"alg": "none", "typ": "JWT"}), &valid, "")),
        ),
        (
            "alg RS256",
            Some(forge(
                &json!({"alg": "RS256", "typ": "JWT"}),
                &valid,
                &good_signature,
            )),
        ),
        (
            "alg HS384 with the right secret",
            Some(sign(Algorithm::HS384, SECRET, &valid)),
        ),
        (
            "claims tampered after signing",
            Some(forge(
                &hs256_header,
                &json!({"sub": "admin", "role": "admin", "iss": "seckill-gateway", "iat": now(), "exp": now() + 600}),
                &good_signature,
            )),
        ),
        (
            "wrong issuer",
            Some(sign(
                Algorithm::HS256,
                SECRET,
                &json!({"sub": "alice", "role": "user", "iss": "evil", "iat": now(), "exp": now() + 600}),
            )),
        ),
        ("malformed", Some("not.a.jwt".to_owned())),
        ("garbage", Some("garbage".to_owned())),
    ];
    for (what, token) in cases {
        let response = gw.get("/api/private/x", token.as_deref()).await;
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(challenge.starts_with("Bearer"), "{what}: {challenge:?}");
        if token.is_some() {
            assert!(challenge.contains("invalid_token"), "{what}: {challenge}");
        }
        let problem = expect_problem(response, 401).await;
        assert_eq!(problem["type"], "/problems/unauthenticated", "{what}");
    }

    // Not a bearer scheme at all.
    let r = gw
        .http
        .get(gw.url("/api/private/x"))
        .header("authorization", format!("Basic {}", b64(b"alice:pw")))
        .send()
        .await
        .expect("get");
    expect_problem(r, 401).await;

    // A token presented on a public route must be valid too.
    let expired = sign(Algorithm::HS256, SECRET, &claims(now() - 5));
    expect_problem(gw.get("/api/public/x", Some(&expired)).await, 401).await;
    assert_eq!(upstream.hits(), 0, "no bad token reached the upstream");
}

#[tokio::test]
async fn forged_user_headers_are_stripped() {
    let (gw, upstream) = setup().await;
    let alice = gw.token("alice").await;
    let send = |path: &str, token: Option<&str>| {
        let mut request = gw
            .http
            .get(gw.url(path))
            .header("x-user-id", "mallory")
            .header("x-user-role", "admin");
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        request.send()
    };

    let (status, _, echo) = read(send("/api/private/x", Some(&alice)).await.expect("get")).await;
    assert_eq!(status, 200);
    assert_eq!(echo["headers"]["x-user-id"], "alice");
    assert_eq!(echo["headers"]["x-user-role"], "user");

    let (status, _, echo) = read(send("/api/public/x", None).await.expect("get")).await;
    assert_eq!(status, 200);
    assert!(echo["headers"].get("x-user-id").is_none(), "{echo}");
    assert!(echo["headers"].get("x-user-role").is_none(), "{echo}");

    // Without a token the forged header does not open a protected route.
    expect_problem(send("/api/private/x", None).await.expect("get"), 401).await;
    for seen in upstream.seen() {
        let user = seen.headers.get("x-user-id").map(|v| v.as_bytes().to_vec());
        assert_ne!(user.as_deref(), Some(&b"mallory"[..]));
    }
}
