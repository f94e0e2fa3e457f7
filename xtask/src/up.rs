//! `cargo xtask up`: the whole shop as native processes until Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use clap::Args;

use crate::services::Services;
use crate::shop::{self, Profile, Shop, ShopOptions};

/// Options shared by `up` and `demo`.
#[derive(Debug, Clone, Args)]
pub struct ShopArgs {
    /// Port of the gateway on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Stock deduction strategy of the stock-services (see docs/strategies.md).
    #[arg(long, default_value = "segmented")]
    pub strategy: String,
    /// Build and run release binaries (slower to build, what benchmarks use).
    #[arg(long)]
    pub release: bool,
    /// Always start throwaway redis-server and PostgreSQL, even when shared ones answer.
    #[arg(long)]
    pub throwaway: bool,
    /// Run the shop on a throwaway 3-master Redis Cluster (cluster-enabled redis-servers
    /// joined by `redis-cli`, as the tests start them) instead of one Redis; PostgreSQL as
    /// usual.
    #[arg(long)]
    pub redis_cluster: bool,
    /// Password of the gateway's `admin` login.
    #[arg(long, env = "ADMIN_PASSWORD", default_value = "admin-demo-password")]
    pub admin_password: String,
    /// `RUST_LOG` of the services (their logs go to files).
    #[arg(long, default_value = "info")]
    pub log: String,
}

impl ShopArgs {
    /// The build profile.
    pub fn profile(&self) -> Profile {
        if self.release {
            Profile::Release
        } else {
            Profile::Debug
        }
    }

    /// A throwaway Redis Cluster when `--redis-cluster` asks for one (kept alive by the
    /// caller for as long as the shop runs), else `None`.
    pub fn redis_cluster(&self) -> anyhow::Result<Option<testkit::RedisCluster>> {
        if !self.redis_cluster {
            return Ok(None);
        }
        let cluster = testkit::RedisCluster::start(3)?;
        println!("redis:    throwaway 3-master cluster {}", cluster.url());
        Ok(Some(cluster))
    }

    /// Options for [`Shop::start`] under `target/xtask/<name>/`, on `cluster` if given.
    pub fn options(
        &self,
        name: &str,
        cluster: Option<&testkit::RedisCluster>,
    ) -> anyhow::Result<ShopOptions> {
        Ok(ShopOptions {
            gateway_port: self.port,
            instances: 2,
            strategy: self.strategy.clone(),
            stock_env: Vec::new(),
            order_env: Vec::new(),
            rate_limits: true,
            admin_password: self.admin_password.clone(),
            name: name.to_owned(),
            run_dir: run_dir(name)?,
            log_filter: self.log.clone(),
            redis_url: cluster.map(testkit::RedisCluster::url),
        })
    }
}

/// `target/xtask/<name>` in the workspace.
pub fn run_dir(name: &str) -> anyhow::Result<PathBuf> {
    Ok(crate::workspace_root()?
        .join("target")
        .join("xtask")
        .join(name))
}

/// Options of `cargo xtask up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    shop: ShopArgs,
}

/// Builds, starts, prints the URLs and waits for Ctrl-C (or for a process to die).
pub fn run(args: &UpArgs) -> anyhow::Result<ExitCode> {
    crate::catch_interrupts()?;
    let args = &args.shop;
    step(
        1,
        3,
        &format!("building the services ({})", args.profile().as_str()),
    );
    let binaries = shop::build(
        args.profile(),
        &["stock-service", "order-service", "gateway"],
    )?;
    step(2, 3, "finding Redis and PostgreSQL");
    let services = Services::acquire(args.throwaway)?;
    let cluster = args.redis_cluster()?;
    step(
        3,
        3,
        "starting 2 stock-services, 2 order-services and the gateway",
    );
    let options = args.options("up", cluster.as_ref())?;
    let result = Shop::start(&services, &binaries, &options).map(|mut shop| {
        print_urls(&shop, args);
        println!("\nA process that dies is restarted (back-off 1 s, doubling to 30 s); Ctrl-C stops everything.");
        let code = supervise_until_interrupt(&mut shop);
        println!("stopping the shop ...");
        shop.stop();
        code
    });
    services.shutdown();
    result
}

/// Prints a numbered progress step.
pub fn step(n: usize, of: usize, what: &str) {
    println!("[{n}/{of}] {what} ...");
}

/// Prints where everything answers.
pub fn print_urls(shop: &Shop, args: &ShopArgs) {
    let urls = &shop.urls;
    println!(
        "\nThe shop is up (strategy {}, {} build):",
        args.strategy,
        args.profile().as_str()
    );
    println!("  gateway          {}", urls.gateway);
    println!("  dashboard        {}/dashboard", urls.gateway);
    println!("  gateway metrics  {}", urls.gateway_metrics);
    for (i, u) in urls.orders.iter().enumerate() {
        println!("  order-service-{}  {u}  (metrics {u}/metrics)", i + 1);
    }
    for (i, u) in urls.stock.iter().enumerate() {
        println!("  stock-service-{}  {u}  (metrics {u}/metrics)", i + 1);
    }
    println!("  databases        {}", shop.databases.join(", "));
    println!("  logs             {}", shop.log_dir.display());
    let pids: Vec<String> = shop
        .pids()
        .into_iter()
        .map(|(name, pid)| format!("{name} {pid}"))
        .collect();
    println!("  pids             {}", pids.join(", "));
    println!(
        "  admin login      POST {}/api/login {{\"user\":\"admin\",\"password\":\"{}\"}}",
        urls.gateway, args.admin_password
    );
    println!(
        "  buyer login      POST {}/api/login {{\"user\":\"alice\"}}",
        urls.gateway
    );
}

/// Keeps every process running (restarting the ones that die, each restart logged) until
/// Ctrl-C.
pub fn supervise_until_interrupt(shop: &mut Shop) -> ExitCode {
    loop {
        if crate::interrupted() {
            return ExitCode::SUCCESS;
        }
        for event in shop.supervise() {
            eprintln!("xtask: {event}");
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until Ctrl-C (success) or until one of the processes dies (failure).
pub fn wait_for_interrupt(shop: &mut Shop) -> ExitCode {
    loop {
        if crate::interrupted() {
            return ExitCode::SUCCESS;
        }
        if let Some(dead) = shop.first_exited() {
            eprintln!("xtask: {dead}");
            return ExitCode::FAILURE;
        }
        thread::sleep(Duration::from_millis(200));
    }
}
