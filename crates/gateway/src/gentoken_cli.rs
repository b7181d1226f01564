//! `venta-gateway gentoken`: print an HS256 client token for development,
//! signed the way the gateway with the same variables verifies it.

use std::process::ExitCode;

use clap::Args;

/// Options of `gentoken`.
#[derive(Debug, Args)]
pub struct GentokenArgs {
    /// The user (`sub`).
    #[arg(long)]
    sub: String,
    /// Lifetime: seconds, or with a unit: 90s, 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: u64,
    /// The gateway's HS256 secret.
    #[arg(long = "jwt-secret", env = "JWT_SECRET", value_name = "JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Set on the gateway? Then it refuses HS256 tokens: gentoken says so.
    #[arg(long = "jwt-public-key", env = "JWT_PUBLIC_KEY", value_name = "JWT_PUBLIC_KEY")]
    jwt_public_key: Option<std::path::PathBuf>,
    /// `iss` to put in the token (the gateway's JWT_ISSUER).
    #[arg(long = "jwt-issuer", env = "JWT_ISSUER", value_name = "JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// `aud` to put in the token (the gateway's JWT_AUDIENCE).
    #[arg(long = "jwt-audience", env = "JWT_AUDIENCE", value_name = "JWT_AUDIENCE")]
    jwt_audience: Option<String>,
}

fn parse_ttl(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('h') => (&s[..s.len() - 1], 3600),
        Some('d') => (&s[..s.len() - 1], 86_400),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 90s, 30m, 1h or 7d"))?;
    n.checked_mul(mult).filter(|v| *v > 0).ok_or_else(|| format!("{s:?} is out of range"))
}

/// Prints the token; exit 2 when the configuration would make the gateway
/// refuse it (no or too short JWT_SECRET, a JWT_PUBLIC_KEY, a bad `--sub`).
pub fn run(args: &GentokenArgs) -> ExitCode {
    let config = args;
    let Some(secret) = config.jwt_secret.as_deref() else {
        eprintln!("error: gentoken signs with JWT_SECRET; set it (at least 16 bytes)");
        return ExitCode::from(2);
    };
    if config.jwt_public_key.is_some() {
        eprintln!("error: JWT_PUBLIC_KEY is set: a gateway with it refuses HS256 tokens (and JWT_SECRET with it)");
        return ExitCode::from(2);
    }
    if let Err(e) = venta_gateway::auth::check_secret(secret) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = venta_gateway::protocol::UserId::parse(&args.sub) {
        eprintln!("error: --sub {e}");
        return ExitCode::from(2);
    }
    let token = venta_gateway::auth::dev_token_for(
        secret,
        &args.sub,
        args.ttl,
        config.jwt_issuer.as_deref(),
        config.jwt_audience.as_deref(),
    );
    match token {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
