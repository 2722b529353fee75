//! `snapfleet certs init|issue`: the CA and the certificates that carry each process's role
//! (see `snapfleet_coordinator::tls`).

use anyhow::{Context, Result};
use clap::Subcommand;
use snapfleet_coordinator::tls::{self, Role};
use std::path::PathBuf;
use std::sync::Arc;
use tls::Tls;

#[derive(Subcommand)]
pub enum CertsCmd {
    /// Make a new CA plus a node identity (coordinators) and an admin client identity.
    ///
    /// Writes ca.pem, ca.key (keep it safe: it signs every identity), node.pem/node.key and
    /// client.pem/client.key (role admin) into --out. Pass the directory as `--certs DIR` to
    /// coordinators and to the CLI; give agents and operators their own directories with
    /// `snapfleet certs issue`. Existing files are never overwritten.
    Init {
        /// Directory to write (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Extra names or IPs of the coordinator hosts for the node certificate (clients check
        /// the fixed name `snapfleet-node`, so these are only informative for other tools).
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        /// Validity of the node and admin certificates in days (the CA: at least 10 years).
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// Sign a new identity with the CA of a `certs init` directory.
    ///
    /// Roles: admin (everything, including membership changes), operator (submit and cancel
    /// jobs, schedules, read), read-only (jobs, schedules, status), agent (the agent API),
    /// node (a coordinator replica). Writes ca.pem plus client.pem/client.key (node.pem/node.key
    /// for role node) into --out, ready to pass as `--certs`.
    Issue {
        /// admin, operator, agent, read-only or node.
        #[arg(long)]
        role: String,
        /// Who or what holds it (the certificate's common name, shown in refusals and logs).
        /// For role agent it must be `agent-<node id>`: the agent id the certificate acts as
        /// (an agent's default id) and the one database node it may serve.
        #[arg(long)]
        name: String,
        /// Directory to write (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Role node only: extra names or IPs of the host.
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
}

/// `certs`: the global `--certs`, for `issue` the `certs init` directory holding the CA.
pub fn run(cmd: CertsCmd, certs: Option<PathBuf>, json: bool) -> Result<()> {
    let (files, what) = match cmd {
        CertsCmd::Init { out, hosts, days } => (
            tls::init_dir(&out, &hosts, days).context("certs init")?,
            "CA, node identity and admin client identity".to_string(),
        ),
        CertsCmd::Issue {
            role,
            name,
            out,
            hosts,
            days,
        } => {
            let role: Role = role.parse()?;
            let certs = certs.context(
                "--certs DIR is required: the `certs init` directory holding ca.pem and ca.key",
            )?;
            (
                tls::issue_into(&certs, &out, role, &name, &hosts, days).context("certs issue")?,
                format!("{role} identity {name:?}"),
            )
        }
    };
    if json {
        println!(
            "{}",
            serde_json::json!({ "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>() })
        );
    } else {
        eprintln!("wrote {what}:");
        for f in &files {
            eprintln!("  {}", f.display());
        }
    }
    Ok(())
}

static CERTS: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

/// Records the global `--certs` (once, at start-up).
pub fn set_certs(certs: Option<PathBuf>) {
    let _ = CERTS.set(certs);
}

/// The global `--certs` directory, if given.
pub fn certs() -> Option<&'static std::path::Path> {
    CERTS.get().and_then(|c| c.as_deref())
}

/// The TLS identity of `--certs`, loaded and checked (None without it). tabletdb
/// connections this process makes from now on use it too: the node identity when
/// `as_node` (servers), else the client one.
pub fn load_tls(as_node: bool) -> Result<Option<Arc<Tls>>> {
    let tls = certs().map(Tls::load).transpose().with_context(|| {
        format!(
            "--certs {}",
            certs().unwrap_or(std::path::Path::new("")).display()
        )
    })?;
    if let Some(t) = &tls {
        snapfleet_tabletdb::security::use_client_tls(t, as_node);
    }
    Ok(tls)
}
