//! `entraid`: diagnose Entra ID authentication to Azure Managed Redis where your app runs.
//!
//! Exit codes: 0 when every check passed, 1 when one failed, 2 for a usage error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use entraid_cli::doctor::{self, DoctorOptions};
use entraid_cli::token::{self, Show, TokenOutcome};

/// Diagnose Microsoft Entra ID authentication to Azure Managed Redis and Azure Cache for
/// Redis, with the identity this environment selects (AZURE_* variables, or a managed
/// identity). Never prints a token or a secret unless asked to with --print-token.
#[derive(Debug, Parser)]
#[command(name = "entraid", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Checks each step from the environment to a PONG: identity, token, claims, audience,
    /// clock, TCP, TLS, AUTH, PING; names the cause and the fix of each failure.
    Doctor {
        #[command(flatten)]
        common: Common,
        /// The cache's host name; without it only the identity side is checked.
        #[arg(long, env = "REDIS_HOST")]
        host: Option<String>,
        /// The cache's port: 10000 on Azure Managed Redis, 6380 on Azure Cache for Redis.
        #[arg(long, env = "REDIS_PORT", default_value_t = 10000)]
        port: u16,
        /// Speak plain TCP instead of TLS (only for a cache with its non-TLS port enabled).
        #[arg(long)]
        no_tls: bool,
        /// The Redis username to send with AUTH [default: the token's oid].
        #[arg(long)]
        username: Option<String>,
        /// Print the report as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Gets one token and prints its claims (never the token, unless --print-token).
    Token {
        #[command(flatten)]
        common: Common,
        /// Print every claim of the token, not only those that matter for Redis.
        #[arg(long, conflicts_with = "print_token")]
        claims: bool,
        /// Print the token itself. It is a credential: anyone who sees it can use the
        /// cache as this identity until it expires.
        #[arg(long)]
        print_token: bool,
        /// Print JSON.
        #[arg(long, conflicts_with = "print_token")]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// A CA certificate file (PEM) to trust besides the system's, for the cache and the
    /// identity endpoint (SSL_CERT_FILE replaces the system's instead).
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// How long each step may take, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 20.0, value_parser = seconds)]
    timeout: f64,
}

/// A positive number of seconds, at most a day.
fn seconds(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds (e.g. 20 or 2.5)"))?;
    if value > 0.0 && value <= 86_400.0 {
        Ok(value)
    } else {
        Err(format!("{text}: give a number of seconds between 0 and 86400"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("entraid: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli.command))
}

fn options(common: &Common) -> DoctorOptions {
    DoctorOptions {
        host: None,
        port: 10000,
        no_tls: false,
        ca_file: common.ca_file.clone(),
        username: None,
        timeout: Duration::from_secs_f64(common.timeout),
    }
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Doctor {
            common,
            host,
            port,
            no_tls,
            username,
            json,
        } => {
            let options = DoctorOptions {
                host: host.filter(|h| !h.trim().is_empty()),
                port,
                no_tls,
                username,
                ..options(&common)
            };
            let report = doctor::run(&options).await;
            if json {
                println!("{:#}", report.to_json());
            } else {
                print!("{}", report.to_text("entraid doctor"));
            }
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Token {
            common,
            claims,
            print_token,
            json,
        } => {
            let show = match (claims, print_token) {
                (_, true) => Show::Token,
                (true, false) => Show::AllClaims,
                (false, false) => Show::Summary,
            };
            if show == Show::Token {
                eprintln!(
                    "entraid: warning: printing a token. It is a credential: anyone who sees it can use the \
                     cache as this identity until it expires. Do not paste it into tickets or logs."
                );
            }
            match token::run(&options(&common), show, json).await {
                TokenOutcome::Printed(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                TokenOutcome::Failed(report) => {
                    if json {
                        println!("{:#}", report.to_json());
                    } else {
                        print!("{}", report.to_text("entraid token"));
                    }
                    ExitCode::FAILURE
                }
            }
        }
    }
}
