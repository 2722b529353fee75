//! Mutual TLS and roles for every RPC of the fleet: coordinators, agents and tabletdb.
//!
//! A certificate directory (`--certs DIR`, `$SNAPFLEET_CERTS`) holds `ca.pem` plus the
//! identities a process may use: `node.pem`/`node.key` to serve (coordinator replicas) and to
//! talk replica to replica, `client.pem`/`client.key` to call a coordinator (CLI, agents).
//! `snapfleet certs init --out DIR` writes a CA, a node identity and an admin client identity;
//! `snapfleet certs issue --role ROLE --name NAME --out DIR2` signs more with that CA.
//!
//! The role is the certificate's subject OU (`O=snapfleet, OU=<role>, CN=<name>`), signed by
//! the CA, so it cannot be changed without the CA key. Servers require a client certificate
//! from the CA (an unknown one fails the handshake), then [`AuthLayer`] checks the role
//! against the called method before any handler runs. Clients check the server certificate
//! against the CA and the fixed name [`SERVER_NAME`] that only node certificates carry, so
//! an agent's or operator's certificate cannot impersonate a coordinator.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// The DNS name every node certificate carries and every client expects.
pub const SERVER_NAME: &str = "snapfleet-node";

/// What a certificate's holder may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything a person can do, including membership changes.
    Admin,
    /// Submit and cancel jobs, manage schedules, and read.
    Operator,
    /// The agent API only (register, heartbeat, leases, progress).
    Agent,
    /// Jobs, schedules and cluster status, read only.
    ReadOnly,
    /// A coordinator replica: Raft messages between replicas.
    Node,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Operator,
        Role::Agent,
        Role::ReadOnly,
        Role::Node,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Agent => "agent",
            Role::ReadOnly => "read-only",
            Role::Node => "node",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, TlsError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                TlsError::Invalid(format!(
                    "unknown role {s:?}: one of admin, operator, agent, read-only, node"
                ))
            })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is missing: {hint}")]
    Missing { path: String, hint: String },
    #[error("{path} already exists: pick another --out directory (nothing was overwritten)")]
    Exists { path: String },
    #[error("{path}: {detail}")]
    BadCertificate { path: String, detail: String },
    #[error("{0}")]
    Invalid(String),
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

fn io(path: &Path, source: std::io::Error) -> TlsError {
    TlsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The methods each role may call. Unknown methods (new ones included) are admin-only.
pub fn allowed(path: &str) -> &'static [Role] {
    use Role::*;
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or("");
    let method = parts.next().unwrap_or("");
    let service = service.rsplit('.').next().unwrap_or("");
    match (service, method) {
        ("RaftTransport", _) => &[Node],
        ("AgentService", _) => &[Agent, Admin],
        // A replica joining a group asks an existing one for the member list.
        ("Coordinator", "ClusterStatus") => &[ReadOnly, Operator, Admin, Node],
        // Agents ask whether the restores they staged have ended (the staging janitor).
        ("Coordinator", "GetJob") => &[ReadOnly, Operator, Agent, Admin],
        ("Coordinator", "ListJobs" | "WatchJob" | "ListSchedules") => &[ReadOnly, Operator, Admin],
        ("Coordinator", "SubmitJob" | "CancelJob" | "PutSchedule" | "DeleteSchedule") => {
            &[Operator, Admin]
        }
        // tabletdb's master. Nodes register with their node identity; coordinator replicas
        // (node identity too) snapshot, restore and clone for the jobs they drive, operators
        // run DDL, clones and in-place restores; agents read the catalog and the clock.
        ("Master", "RegisterNode") => &[Node, Admin],
        ("Master", "GetCatalog" | "Now" | "ListSnapshots") => {
            &[ReadOnly, Operator, Agent, Node, Admin]
        }
        ("Master", _) => &[Operator, Node, Admin],
        // tabletdb's nodes. The master (node identity) places, snapshots and clones tablets;
        // agents import restored tablets and read the change log; operators write rows.
        ("TabletServer", "Read" | "Scan" | "NodeStatus") => {
            &[ReadOnly, Operator, Agent, Node, Admin]
        }
        ("TabletServer", "Write") => &[Operator, Node, Admin],
        ("TabletServer", "ImportTablet" | "ReadChangeLog" | "CompactTablet") => {
            &[Agent, Operator, Node, Admin]
        }
        ("TabletServer", _) => &[Node, Admin],
        _ => &[Admin],
    }
}

/// What snapfleet reads from a certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub common_name: String,
    /// The subject OU: our role name (None on the CA).
    pub unit: Option<String>,
    pub not_before: time::OffsetDateTime,
    pub not_after: time::OffsetDateTime,
    /// The subject public key (the BIT STRING's bytes).
    pub public_key: Vec<u8>,
}

const OID_CN: [u64; 4] = [2, 5, 4, 3];
const OID_OU: [u64; 4] = [2, 5, 4, 11];

fn read_time(r: yasna::BERReader<'_, '_>) -> yasna::ASN1Result<time::OffsetDateTime> {
    if r.lookahead_tag()? == yasna::tags::TAG_UTCTIME {
        Ok(*r.read_utctime()?.datetime())
    } else {
        Ok(*r.read_generalized_time()?.datetime())
    }
}

fn read_string(r: yasna::BERReader<'_, '_>) -> yasna::ASN1Result<String> {
    let tag = r.lookahead_tag()?;
    if tag == yasna::tags::TAG_PRINTABLESTRING {
        r.read_printable_string()
    } else if tag == yasna::tags::TAG_UTF8STRING {
        r.read_utf8string()
    } else {
        // Any other string type: not one we write; keep the raw bytes out of the way.
        r.read_der().map(|_| String::new())
    }
}

/// Reads subject CN/OU, validity and public key from a DER X.509 certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, String> {
    yasna::parse_der(der, |r| {
        r.read_sequence(|r| {
            let info = r.next().read_sequence(|r| {
                // version [0] EXPLICIT, serial, signature algorithm, issuer
                r.read_optional(|r| r.read_tagged(yasna::Tag::context(0), |r| r.read_u8()))?;
                r.next().read_der()?;
                r.next().read_der()?;
                r.next().read_der()?;
                let (not_before, not_after) = r
                    .next()
                    .read_sequence(|r| Ok((read_time(r.next())?, read_time(r.next())?)))?;
                let (mut cn, mut ou) = (String::new(), None);
                r.next().read_sequence_of(|r| {
                    r.read_set_of(|r| {
                        r.read_sequence(|r| {
                            let oid = r.next().read_oid()?;
                            let value = read_string(r.next())?;
                            if oid.components().as_slice() == OID_CN {
                                cn = value;
                            } else if oid.components().as_slice() == OID_OU {
                                ou = Some(value);
                            }
                            Ok(())
                        })
                    })
                })?;
                let public_key = r.next().read_sequence(|r| {
                    r.next().read_der()?;
                    Ok(r.next().read_bitvec_bytes()?.0)
                })?;
                // issuerUniqueID, subjectUniqueID, extensions: not needed here.
                while r.read_optional(|r| r.read_der())?.is_some() {}
                Ok(CertInfo {
                    common_name: cn,
                    unit: ou,
                    not_before,
                    not_after,
                    public_key,
                })
            })?;
            r.next().read_der()?;
            r.next().read_der()?;
            Ok(info)
        })
    })
    .map_err(|e| format!("unreadable certificate: {e}"))
}

/// Subject of a certificate: (common name, role).
pub fn identity_of(der: &[u8]) -> Result<(String, Role), String> {
    let info = cert_info(der)?;
    let cn = info.common_name;
    let ou = info
        .unit
        .ok_or_else(|| format!("certificate {cn:?} names no role (subject OU)"))?;
    let role = ou.parse::<Role>().map_err(|e| e.to_string())?;
    Ok((cn, role))
}

fn pem_der(path: &Path, pem_bytes: &[u8]) -> Result<Vec<u8>, TlsError> {
    let p = pem::parse(pem_bytes).map_err(|e| TlsError::BadCertificate {
        path: path.display().to_string(),
        detail: format!("not PEM: {e}"),
    })?;
    if p.tag() != "CERTIFICATE" {
        return Err(TlsError::BadCertificate {
            path: path.display().to_string(),
            detail: format!("holds a {:?}, not a CERTIFICATE", p.tag()),
        });
    }
    Ok(p.into_contents())
}

/// The check [`AuthLayer`] runs: may the holder of `peer` (first certificate of the chain)
/// call `path`?
pub fn authorize(path: &str, peer: Option<&[u8]>) -> Result<(), tonic::Status> {
    let Some(der) = peer else {
        return Err(tonic::Status::unauthenticated(
            "no client certificate: pass --certs DIR (made by `snapfleet certs init|issue`)",
        ));
    };
    let (cn, role) = identity_of(der).map_err(tonic::Status::unauthenticated)?;
    let roles = allowed(path);
    if roles.contains(&role) {
        return Ok(());
    }
    let need: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    Err(tonic::Status::permission_denied(format!(
        "certificate {cn:?} has role {role}, which may not call {path}: it needs {}; \
         issue one with `snapfleet certs issue --role {} --name NAME`",
        need.join(" or "),
        need[0]
    )))
}

/// The (common name, role) of a request's client certificate; None without TLS.
pub fn caller<T>(req: &tonic::Request<T>) -> Option<(String, Role)> {
    let certs = req.peer_certs()?;
    identity_of(certs.first()?.as_ref()).ok()
}

/// A tower layer that enforces [`authorize`] on every request (when `enforce`).
#[derive(Clone, Copy, Debug)]
pub struct AuthLayer {
    pub enforce: bool,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            enforce: self.enforce,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    enforce: bool,
}

type TcpTls = tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>;

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if self.enforce {
            let certs = req
                .extensions()
                .get::<TcpTls>()
                .and_then(|i| i.peer_certs());
            let peer = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
            if let Err(status) = authorize(req.uri().path(), peer) {
                tracing::warn!(method = %req.uri().path(), reason = %status.message(), "refused");
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        Box::pin(self.inner.call(req))
    }
}

/// A loaded certificate directory.
#[derive(Clone)]
pub struct Tls {
    dir: PathBuf,
    ca: Vec<u8>,
    node: Option<Pair>,
    client: Option<Pair>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        write!(f, "Tls({})", self.dir.display())
    }
}

/// A certificate and its key, PEM.
type Pair = (Vec<u8>, Vec<u8>);

fn read_pair(dir: &Path, stem: &str) -> Result<Option<Pair>, TlsError> {
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    if !cert.exists() {
        return Ok(None);
    }
    let c = std::fs::read(&cert).map_err(|e| io(&cert, e))?;
    let k = std::fs::read(&key).map_err(|e| io(&key, e))?;
    check_pem(&cert, &c)?;
    Ok(Some((c, k)))
}

/// Parses a PEM certificate enough to give a clear error before any handshake does.
fn check_pem(path: &Path, pem_bytes: &[u8]) -> Result<CertInfo, TlsError> {
    let bad = |detail: String| TlsError::BadCertificate {
        path: path.display().to_string(),
        detail,
    };
    let info = cert_info(&pem_der(path, pem_bytes)?).map_err(bad)?;
    let now = time::OffsetDateTime::now_utc();
    if now < info.not_before || now > info.not_after {
        return Err(bad(format!(
            "expired or not yet valid (valid {} to {}): issue a new one with `snapfleet certs issue`",
            info.not_before, info.not_after
        )));
    }
    Ok(info)
}

impl Tls {
    /// Loads `dir`: `ca.pem` and whichever of `node.*`, `client.*` exist.
    pub fn load(dir: &Path) -> Result<Arc<Tls>, TlsError> {
        let ca_path = dir.join("ca.pem");
        if !ca_path.exists() {
            return Err(TlsError::Missing {
                path: ca_path.display().to_string(),
                hint: "make a certificate directory with `snapfleet certs init --out DIR`".into(),
            });
        }
        let ca = std::fs::read(&ca_path).map_err(|e| io(&ca_path, e))?;
        check_pem(&ca_path, &ca)?;
        let node = read_pair(dir, "node")?;
        let client = read_pair(dir, "client")?;
        if node.is_some() && dir.join("ca.key").exists() {
            tracing::warn!(
                dir = %dir.display(),
                "ca.key sits beside this replica's identity: whoever reads this host can sign \
                 any role; copy only ca.pem, node.pem and node.key to coordinator hosts"
            );
        }
        if node.is_none() && client.is_none() {
            return Err(TlsError::Missing {
                path: dir.join("client.pem").display().to_string(),
                hint: "the directory holds no identity (client.pem/client.key or \
                       node.pem/node.key): issue one with `snapfleet certs issue`"
                    .into(),
            });
        }
        Ok(Arc::new(Tls {
            dir: dir.to_path_buf(),
            ca,
            node,
            client,
        }))
    }

    /// For serving: the node identity, client certificates required and checked against the CA.
    pub fn server_config(&self) -> Result<ServerTlsConfig, TlsError> {
        let (cert, key) = self.node.as_ref().ok_or_else(|| TlsError::Missing {
            path: self.dir.join("node.pem").display().to_string(),
            hint: "a coordinator needs a node identity: `snapfleet certs issue --role node \
                   --name coord1 --hosts HOST --out DIR`"
                .into(),
        })?;
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(&self.ca)))
    }

    /// For dialing: the client identity (or the node one on a replica).
    pub fn client_config(&self, prefer_node: bool) -> ClientTlsConfig {
        let (cert, key) = if prefer_node {
            self.node.as_ref().or(self.client.as_ref())
        } else {
            self.client.as_ref().or(self.node.as_ref())
        }
        .expect("load() requires one identity");
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(cert, key))
            .domain_name(SERVER_NAME)
    }
}

/// An endpoint for `addr` (`host:port` or a URL): https + the client identity when `tls`.
pub fn endpoint(
    addr: &str,
    tls: Option<&Tls>,
    as_node: bool,
) -> Result<Endpoint, tonic::transport::Error> {
    let hostport = addr
        .strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .unwrap_or(addr);
    match tls {
        // An explicit https:// without certificates would silently go plaintext: refuse.
        None if addr.starts_with("https://") => {
            Endpoint::from_shared(format!("https://{hostport}"))
        }
        None => Endpoint::from_shared(format!("http://{hostport}")),
        Some(t) => Endpoint::from_shared(format!("https://{hostport}"))?
            .tls_config(t.client_config(as_node)),
    }
}

// ---- making certificates ----

/// The CA's common name (its subject is `O=snapfleet, CN=snapfleet CA`).
const CA_NAME: &str = "snapfleet CA";

fn params(
    role: Option<Role>,
    name: &str,
    hosts: &[String],
    days: u32,
) -> Result<rcgen::CertificateParams, TlsError> {
    use rcgen::{
        DistinguishedName, DnType, ExtendedKeyUsagePurpose as Eku, IsCa, KeyUsagePurpose as Ku,
        SanType,
    };
    let mut p = rcgen::CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "snapfleet");
    if let Some(r) = role {
        dn.push(DnType::OrganizationalUnitName, r.as_str());
    }
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(days.into());
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    match role {
        None => {
            p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
            p.key_usages = vec![Ku::KeyCertSign, Ku::CrlSign, Ku::DigitalSignature];
        }
        Some(r) => {
            p.use_authority_key_identifier_extension = true;
            p.key_usages = vec![Ku::DigitalSignature];
            p.extended_key_usages = vec![Eku::ClientAuth];
            if r == Role::Node {
                p.extended_key_usages.push(Eku::ServerAuth);
                let mut names = vec![SERVER_NAME.to_string(), "localhost".into()];
                names.extend(hosts.iter().cloned());
                for h in names {
                    p.subject_alt_names
                        .push(match h.parse::<std::net::IpAddr>() {
                            Ok(ip) => SanType::IpAddress(ip),
                            Err(_) => SanType::DnsName(h.clone().try_into().map_err(|_| {
                                TlsError::Invalid(format!(
                                    "host {h:?} is neither an IP nor a DNS name"
                                ))
                            })?),
                        });
                }
            }
        }
    }
    Ok(p)
}

fn write_new(path: &Path, data: &str, secret: bool) -> Result<(), TlsError> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = o.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            TlsError::Exists {
                path: path.display().to_string(),
            }
        } else {
            io(path, e)
        }
    })?;
    f.write_all(data.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| io(path, e))
}

fn refuse_existing(paths: &[PathBuf]) -> Result<(), TlsError> {
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(TlsError::Exists {
            path: p.display().to_string(),
        }),
        None => Ok(()),
    }
}

/// `snapfleet certs init`: a new CA plus a node identity (for `hosts`) and an admin client
/// identity in `out`. Returns the files written.
pub fn init_dir(out: &Path, hosts: &[String], days: u32) -> Result<Vec<PathBuf>, TlsError> {
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let files: Vec<PathBuf> = [
        "ca.pem",
        "ca.key",
        "node.pem",
        "node.key",
        "client.pem",
        "client.key",
    ]
    .iter()
    .map(|f| out.join(f))
    .collect();
    refuse_existing(&files)?;
    let ca_key = rcgen::KeyPair::generate()?;
    let ca_params = params(None, CA_NAME, &[], days.max(3650))?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let node = sign(&issuer, Role::Node, "node", hosts, days)?;
    let admin = sign(&issuer, Role::Admin, "admin", &[], days)?;
    write_new(&files[0], &ca_cert.pem(), false)?;
    write_new(&files[1], &ca_key.serialize_pem(), true)?;
    write_new(&files[2], &node.0, false)?;
    write_new(&files[3], &node.1, true)?;
    write_new(&files[4], &admin.0, false)?;
    write_new(&files[5], &admin.1, true)?;
    Ok(files)
}

fn sign(
    issuer: &rcgen::Issuer<'_, &rcgen::KeyPair>,
    role: Role,
    name: &str,
    hosts: &[String],
    days: u32,
) -> Result<(String, String), TlsError> {
    let key = rcgen::KeyPair::generate()?;
    let cert = params(Some(role), name, hosts, days)?.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// `snapfleet certs issue`: signs a `role` identity named `name` with the CA in `ca_dir`,
/// writing `ca.pem` and `node.*` (role node) or `client.*` (any other role) into `out`.
pub fn issue_into(
    ca_dir: &Path,
    out: &Path,
    role: Role,
    name: &str,
    hosts: &[String],
    days: u32,
) -> Result<Vec<PathBuf>, TlsError> {
    let ca_pem_path = ca_dir.join("ca.pem");
    let ca_key_path = ca_dir.join("ca.key");
    for p in [&ca_pem_path, &ca_key_path] {
        if !p.exists() {
            return Err(TlsError::Missing {
                path: p.display().to_string(),
                hint: "issue from the directory `snapfleet certs init` made (it holds the CA key)"
                    .into(),
            });
        }
    }
    let ca_pem = std::fs::read_to_string(&ca_pem_path).map_err(|e| io(&ca_pem_path, e))?;
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(|e| io(&ca_key_path, e))?;
    let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem).map_err(|e| TlsError::BadCertificate {
        path: ca_key_path.display().to_string(),
        detail: e.to_string(),
    })?;
    // The issuer is our CA's fixed subject with this key; check that they belong together.
    let info = check_pem(&ca_pem_path, ca_pem.as_bytes())?;
    if info.common_name != CA_NAME || info.unit.is_some() {
        return Err(TlsError::BadCertificate {
            path: ca_pem_path.display().to_string(),
            detail: format!(
                "{:?} is not a CA made by `snapfleet certs init`",
                info.common_name
            ),
        });
    }
    if info.public_key != ca_key.public_key_raw() {
        return Err(TlsError::BadCertificate {
            path: ca_key_path.display().to_string(),
            detail: format!("is not the key of {}", ca_pem_path.display()),
        });
    }
    let issuer = rcgen::Issuer::new(params(None, CA_NAME, &[], 1)?, &ca_key);
    let stem = if role == Role::Node { "node" } else { "client" };
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let files = vec![
        out.join("ca.pem"),
        out.join(format!("{stem}.pem")),
        out.join(format!("{stem}.key")),
    ];
    // The CA certificate may already be there (a second identity in the same directory).
    let same_ca = std::fs::read_to_string(&files[0]).ok().as_deref() == Some(ca_pem.as_str());
    refuse_existing(if same_ca { &files[1..] } else { &files })?;
    let (cert, key) = sign(&issuer, role, name, hosts, days)?;
    if !same_ca {
        write_new(&files[0], &ca_pem, false)?;
    }
    write_new(&files[1], &cert, false)?;
    write_new(&files[2], &key, true)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_map_to_methods() {
        assert_eq!(
            allowed("/snapfleet.coordinator.v1.RaftTransport/Send"),
            &[Role::Node]
        );
        assert!(
            allowed("/snapfleet.coordinator.v1.Coordinator/SubmitJob").contains(&Role::Operator)
        );
        assert!(
            !allowed("/snapfleet.coordinator.v1.Coordinator/SubmitJob").contains(&Role::ReadOnly)
        );
        assert!(allowed("/snapfleet.coordinator.v1.Coordinator/ListJobs").contains(&Role::ReadOnly));
        assert!(
            !allowed("/snapfleet.coordinator.v1.AgentService/Register").contains(&Role::Operator)
        );
        // Anything not listed (membership changes, future methods) is admin-only.
        assert_eq!(
            allowed("/snapfleet.coordinator.v1.Coordinator/AddReplica"),
            &[Role::Admin]
        );
        assert_eq!(allowed("/x/y"), &[Role::Admin]);
        // tabletdb: an agent imports tablets but neither writes rows nor runs DDL; a
        // read-only certificate reads rows only.
        let ts = |m: &str| allowed(&format!("/snapfleet.tabletdb.v1.TabletServer/{m}"));
        let ms = |m: &str| allowed(&format!("/snapfleet.tabletdb.v1.Master/{m}"));
        assert!(ts("ImportTablet").contains(&Role::Agent));
        assert!(!ts("Write").contains(&Role::Agent));
        assert!(!ts("Write").contains(&Role::ReadOnly));
        assert!(ts("Scan").contains(&Role::ReadOnly));
        assert!(!ts("CreateTablet").contains(&Role::Operator));
        assert!(!ms("DropTable").contains(&Role::Agent));
        assert!(!ms("RestoreToTime").contains(&Role::Agent));
        assert!(!ms("RestoreToTime").contains(&Role::ReadOnly));
        assert!(ms("RestoreToTime").contains(&Role::Node));
        assert!(!ms("RegisterNode").contains(&Role::Agent));
    }

    #[test]
    fn issued_certificates_carry_their_role_and_refuse_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let files = init_dir(dir.path(), &["10.0.0.1".into()], 30).unwrap();
        assert_eq!(files.len(), 6);
        let tls = Tls::load(dir.path()).unwrap();
        tls.server_config().unwrap();
        let ro = dir.path().join("ro");
        issue_into(dir.path(), &ro, Role::ReadOnly, "auditor", &[], 30).unwrap();
        let pem = std::fs::read(ro.join("client.pem")).unwrap();
        let der = pem_der(&ro, &pem).unwrap();
        assert_eq!(
            identity_of(&der).unwrap(),
            ("auditor".to_string(), Role::ReadOnly)
        );
        let e = authorize(
            "/snapfleet.coordinator.v1.Coordinator/SubmitJob",
            Some(&der),
        )
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("read-only"), "{e:?}");
        authorize("/snapfleet.coordinator.v1.Coordinator/ListJobs", Some(&der)).unwrap();
        // A second identity in the same directory is fine; the same one twice is refused.
        issue_into(dir.path(), &ro, Role::Node, "n2", &[], 30).unwrap();
        let e = issue_into(dir.path(), &ro, Role::Agent, "a", &[], 30).unwrap_err();
        assert!(matches!(e, TlsError::Exists { .. }), "{e}");
        assert!(matches!(
            init_dir(dir.path(), &[], 30),
            Err(TlsError::Exists { .. })
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(dir.path().join("ca.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, 0o600);
        }
    }
}
