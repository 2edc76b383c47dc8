//! Issuing terminal and wallet certificates and pickup credentials into files.

use std::path::{Path, PathBuf};

use p256::ecdsa::SigningKey;
use p256::elliptic_curve::zeroize::Zeroizing;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use rand_core::CryptoRngCore;
use tapstack_protocol::crypto::{compress, WalletCryptogramKey};
use tapstack_protocol::pki::{self, CertSpec, Certificate, Role};
use tapstack_protocol::scenario::{PickupCredential, MAX_PARCEL, MAX_SITE};
use tapstack_protocol::Codec;

use crate::fsio::{self, Mode};
use crate::hsm::IssuerKeys;
use crate::store::{after_days, Identity, Pki};
use crate::{Error, BACKDATE, CREDENTIAL_DAYS, LEAF_DAYS};

/// Options of [`Pki::issue_terminal`] and [`Pki::issue_wallet`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeafOptions {
    /// Validity in days; [`LEAF_DAYS`] if `None`. Never beyond the signing
    /// CA's own `not_after`.
    pub days: Option<u64>,
    /// Base name of the output files; [`file_stem`] of the name if `None`.
    pub file_stem: Option<String>,
}

/// A certificate issued into files.
#[derive(Debug, Clone)]
pub struct IssuedLeaf {
    pub identity: Identity,
    /// `<stem>.pem`
    pub cert_path: PathBuf,
    /// `<stem>.key`, PKCS#8 PEM, mode 0600.
    pub key_path: PathBuf,
}

/// A wallet certificate and its cryptogram key, issued into files.
#[derive(Debug, Clone)]
pub struct IssuedWallet {
    pub leaf: IssuedLeaf,
    /// `issuer_master_key.diversify(cert.serial())`, from the file or the HSM.
    pub cryptogram_key: WalletCryptogramKey,
    /// `<stem>.ck`, hex, mode 0600.
    pub cryptogram_key_path: PathBuf,
}

/// What a pickup credential says.
#[derive(Debug, Clone, Copy)]
pub struct CredentialRequest<'a> {
    /// The recipient; must be a wallet certificate valid under this PKI.
    pub wallet: &'a Certificate,
    pub site: &'a str,
    pub slot: u16,
    pub parcel: &'a str,
    /// Validity in days; [`CREDENTIAL_DAYS`] if `None`.
    pub days: Option<u64>,
}

/// A file-name-safe stem for `name`: ASCII letters and digits lowercased,
/// every other run of characters one `-`, at most 64 bytes. `None` if
/// nothing is left ("Tea House #12" → "tea-house-12").
pub fn file_stem(name: &str) -> Option<String> {
    let mut stem = String::new();
    let mut gap = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            if gap && !stem.is_empty() {
                stem.push('-');
            }
            gap = false;
            stem.push(c.to_ascii_lowercase());
        } else {
            gap = true;
        }
        if stem.len() >= 64 {
            break;
        }
    }
    (!stem.is_empty()).then_some(stem)
}

fn check_stem(stem: &str) -> Result<(), Error> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if stem.is_empty()
        || stem.len() > 64
        || !stem.chars().all(ok_char)
        || stem.starts_with(['.', '-'])
    {
        return Err(Error::Invalid {
            field: "file name",
            reason: "must be 1 to 64 of A-Z a-z 0-9 . _ - and not start with . or -",
        });
    }
    Ok(())
}

fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::Invalid {
            field,
            reason: "must not be empty",
        });
    }
    if value.len() > max {
        return Err(Error::Invalid {
            field,
            reason: "too long",
        });
    }
    if value.chars().any(char::is_control) {
        return Err(Error::Invalid {
            field,
            reason: "must not contain control characters",
        });
    }
    Ok(())
}

impl Pki {
    /// Issue a terminal certificate: common name `merchant_name` (what phones
    /// show), role terminal, signed by the acquirer. Writes `<stem>.pem` and
    /// `<stem>.key` into `out_dir` (created if missing; existing files are
    /// not overwritten).
    pub fn issue_terminal(
        &self,
        merchant_name: &str,
        out_dir: &Path,
        opts: &LeafOptions,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<IssuedLeaf, Error> {
        self.issue_terminal_with_id(merchant_name, None, out_dir, opts, now, rng)
    }

    /// Renew a terminal certificate: a new key and certificate with the
    /// same merchant name and terminal ID as `old`, which must be a terminal
    /// certificate of this PKI (its chain and signatures check at its own
    /// validity, and it is not revoked by then). The host keeps one chain
    /// of records across both ([`Certificate::terminal_id`]).
    pub fn renew_terminal(
        &self,
        old: &Certificate,
        out_dir: &Path,
        opts: &LeafOptions,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<IssuedLeaf, Error> {
        let at = now.min(old.not_after()).max(old.not_before());
        self.trust_store()
            .verify(old, Role::Terminal, at, Some(self.revocations()))
            .map_err(|source| Error::Rejected {
                role: old.role(),
                common_name: old.common_name().to_owned(),
                source,
            })?;
        let id = old.terminal_id().ok_or(Error::Invalid {
            field: "renew",
            reason: "the certificate has no terminal ID (issued before IDs); issue a new terminal instead",
        })?;
        self.issue_terminal_with_id(old.common_name(), Some(id), out_dir, opts, now, rng)
    }

    /// Issue a terminal certificate with terminal ID `id` (subject
    /// serialNumber: 1 to 64 letters, digits or '-'), or a random one (16
    /// hex digits) when `None`.
    pub fn issue_terminal_with_id(
        &self,
        merchant_name: &str,
        id: Option<&str>,
        out_dir: &Path,
        opts: &LeafOptions,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<IssuedLeaf, Error> {
        let id = match id {
            Some(id) if pki::valid_terminal_id(id) => id.to_owned(),
            Some(_) => {
                return Err(Error::Invalid {
                    field: "id",
                    reason: "must be 1 to 64 letters, digits or '-'",
                })
            }
            None => {
                let mut b = [0u8; 8];
                rng.fill_bytes(&mut b);
                hex::encode(b)
            }
        };
        let (identity, files) = self.new_leaf(
            Role::Terminal,
            merchant_name,
            Some(&id),
            out_dir,
            opts,
            now,
            rng,
        )?;
        write_leaf(identity, files, out_dir)
    }

    /// Issue the TLS client certificate of `terminal` (a terminal
    /// certificate of this PKI): role `terminal-tls`, a key of its own, the
    /// same merchant name and terminal ID, extended key usage clientAuth,
    /// signed by the acquirer. The terminal presents it to the host
    /// (`[host] tls_certificate`); its transcript-signing key never leaves
    /// the tap. Files: `<stem>.pem`, `<stem>.key`, stem `<ID>-tls` unless
    /// `opts` names one.
    pub fn issue_terminal_tls(
        &self,
        terminal: &Certificate,
        out_dir: &Path,
        opts: &LeafOptions,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<IssuedLeaf, Error> {
        self.trust_store()
            .verify(terminal, Role::Terminal, now, Some(self.revocations()))
            .map_err(|source| Error::Rejected {
                role: terminal.role(),
                common_name: terminal.common_name().to_owned(),
                source,
            })?;
        let id = terminal.terminal_id().ok_or(Error::Invalid {
            field: "terminal",
            reason: "the certificate has no terminal ID (issued before IDs); issue a new terminal instead",
        })?;
        let mut opts = opts.clone();
        if opts.file_stem.is_none() {
            opts.file_stem = Some(format!("{id}-tls"));
        }
        let (identity, files) = self.new_leaf(
            Role::TerminalTls,
            terminal.common_name(),
            Some(id),
            out_dir,
            &opts,
            now,
            rng,
        )?;
        write_leaf(identity, files, out_dir)
    }

    /// Issue a wallet certificate (role wallet, signed by the issuer) and its
    /// cryptogram key, diversified from the master key file. Writes
    /// `<stem>.pem`, `<stem>.key` and `<stem>.ck`. A PKI whose master key is
    /// in an HSM issues with [`Pki::issue_wallet_with`].
    pub fn issue_wallet(
        &self,
        name: &str,
        out_dir: &Path,
        opts: &LeafOptions,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<IssuedWallet, Error> {
        let keys = self.issuer_master_key_file()?;
        self.issue_wallet_with(keys, name, out_dir, opts, now, rng)
    }

    /// [`Pki::issue_wallet`] with the cryptogram key from `keys` (an
    /// [`crate::HsmMasterKey`] derives it inside the token).
    pub fn issue_wallet_with(
        &self,
        keys: &dyn IssuerKeys,
        name: &str,
        out_dir: &Path,
        opts: &LeafOptions,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<IssuedWallet, Error> {
        // `name` is a local label (the file names) only: every wallet
        // certificate says CN=wallet, so no terminal learns who pays.
        let mut opts = opts.clone();
        if opts.file_stem.is_none() {
            opts.file_stem = Some(file_stem(name).ok_or(Error::Invalid {
                field: "name",
                reason: "has no letters or digits to name the files by; give a file name",
            })?);
        }
        let (identity, files) =
            self.new_leaf(Role::Wallet, pki::WALLET_CN, None, out_dir, &opts, now, rng)?;
        let key_pem = key_pem(&identity.key, &files.key)?;
        let cert_pem = identity.cert.to_pem();
        let cryptogram_key = keys.wallet_key(identity.cert.serial())?;
        let ck_hex = Zeroizing::new(format!("{}\n", hex::encode(cryptogram_key.0)));
        let ck_path = files.cert.with_extension("ck");
        fsio::create_dir(out_dir)?;
        fsio::write_all_new(&[
            (files.cert.clone(), cert_pem.as_bytes(), Mode::Public),
            (files.key.clone(), key_pem.as_bytes(), Mode::Secret),
            (ck_path.clone(), ck_hex.as_bytes(), Mode::Secret),
        ])?;
        Ok(IssuedWallet {
            leaf: IssuedLeaf {
                identity,
                cert_path: files.cert,
                key_path: files.key,
            },
            cryptogram_key,
            cryptogram_key_path: ck_path,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn new_leaf(
        &self,
        role: Role,
        name: &str,
        terminal_id: Option<&str>,
        out_dir: &Path,
        opts: &LeafOptions,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Identity, LeafFiles), Error> {
        let stem = match &opts.file_stem {
            Some(s) => s.clone(),
            None => file_stem(name).ok_or(Error::Invalid {
                field: "name",
                reason: "has no letters or digits to name the files by; give a file name",
            })?,
        };
        check_stem(&stem)?;
        let files = LeafFiles {
            cert: out_dir.join(format!("{stem}.pem")),
            key: out_dir.join(format!("{stem}.key")),
        };

        let ca = self.identity(role);
        // Refuse to sign with a CA that is itself expired or revoked.
        self.verify(&ca.cert, now)?;
        let not_after = after_days(now, opts.days.unwrap_or(LEAF_DAYS))?.min(ca.cert.not_after());
        let spec = CertSpec {
            role,
            common_name: name,
            not_before: now.saturating_sub(BACKDATE),
            not_after,
            terminal_id,
            endorsed_sites: &[],
        };
        let key = SigningKey::random(&mut *rng);
        let cert = pki::issue(&spec, key.verifying_key(), (&ca.cert, &ca.key), rng)
            .map_err(|source| Error::Issue { role, source })?;
        Ok((Identity { cert, key }, files))
    }

    /// Endorse `terminal` (a terminal certificate of this PKI) as a locker
    /// kiosk for `sites`: a kiosk certificate signed by the operator, for
    /// the terminal's public key, written as PEM to `out` (which must not
    /// exist). The terminal sends it in pickups (`[kiosk] endorsement`);
    /// wallets release credentials of this operator only to it, and only
    /// for these sites. Valid for `days` ([`LEAF_DAYS`] if `None`), never
    /// beyond the terminal's or the operator's certificate.
    pub fn issue_kiosk(
        &self,
        terminal: &Certificate,
        sites: &[String],
        out: &Path,
        days: Option<u64>,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Certificate, Error> {
        if terminal.role() != Role::Terminal {
            return Err(Error::Invalid {
                field: "terminal",
                reason: "is not a terminal certificate",
            });
        }
        if sites.is_empty() || sites.len() > pki::MAX_ENDORSED_SITES {
            return Err(Error::Invalid {
                field: "site",
                reason: "give 1 to 16 sites",
            });
        }
        for site in sites {
            check_text("site", site, MAX_SITE)?;
        }
        self.verify(terminal, now)?;
        let operator = self.operator();
        self.verify(&operator.cert, now)?;
        let not_after = after_days(now, days.unwrap_or(LEAF_DAYS))?
            .min(terminal.not_after())
            .min(operator.cert.not_after());
        let spec = CertSpec {
            role: Role::Kiosk,
            common_name: terminal.common_name(),
            not_before: now.saturating_sub(BACKDATE),
            not_after,
            terminal_id: terminal.terminal_id(),
            endorsed_sites: sites,
        };
        let cert = pki::issue(
            &spec,
            terminal.public_key(),
            (&operator.cert, &operator.key),
            rng,
        )
        .map_err(|source| Error::Issue {
            role: Role::Kiosk,
            source,
        })?;
        if let Some(parent) = out.parent() {
            fsio::create_dir(parent)?;
        }
        fsio::write_new(out, cert.to_pem().as_bytes(), Mode::Public)?;
        Ok(cert)
    }

    /// Issue a pickup credential, signed by the operator, for the wallet
    /// certificate in `req`, and write its TLV encoding to `out` (which must
    /// not exist). Releasing it needs the user's presence on the phone.
    pub fn issue_credential(
        &self,
        req: &CredentialRequest<'_>,
        out: &Path,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<PickupCredential, Error> {
        self.issue_credential_with_class(req, None, out, now, rng)
    }

    /// [`Pki::issue_credential`]; with `low_value_class` (e.g. `"letter"`)
    /// the operator relaxes user presence for this credential: a phone
    /// releases it in one tap unless the kiosk asks for presence (`D3`).
    pub fn issue_credential_with_class(
        &self,
        req: &CredentialRequest<'_>,
        low_value_class: Option<&str>,
        out: &Path,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<PickupCredential, Error> {
        check_text("site", req.site, MAX_SITE)?;
        if let Some(class) = low_value_class {
            check_text(
                "low-value class",
                class,
                tapstack_protocol::scenario::MAX_PRESENCE_CLASS,
            )?;
        }
        check_text("parcel id", req.parcel, MAX_PARCEL)?;
        if req.wallet.role() != Role::Wallet {
            return Err(Error::Invalid {
                field: "recipient",
                reason: "is not a wallet certificate",
            });
        }
        self.verify(req.wallet, now)?;
        self.verify(&self.operator().cert, now)?;
        let not_after = after_days(now, req.days.unwrap_or(CREDENTIAL_DAYS))?;

        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let mut cred = PickupCredential {
            id,
            parcel: req.parcel.to_owned(),
            site: req.site.to_owned(),
            slot: req.slot,
            recipient: compress(&p256::PublicKey::from(req.wallet.public_key())),
            not_after,
            operator: [0; 32],
            low_value_class: low_value_class.map(str::to_owned),
            signature: [0; 64],
        };
        cred.sign(&self.operator().cert, &self.operator().key);
        let bytes = cred.to_bytes();
        // What we write must read back as the same credential.
        match PickupCredential::decode(&bytes) {
            Ok(back) if back == cred => {}
            Ok(_) => {
                return Err(Error::Invalid {
                    field: "credential",
                    reason: "does not round-trip",
                })
            }
            Err(source) => {
                return Err(Error::Decode {
                    path: out.to_path_buf(),
                    what: "pickup credential",
                    source,
                })
            }
        }
        if let Some(parent) = out.parent() {
            fsio::create_dir(parent)?;
        }
        fsio::write_new(out, &bytes, Mode::Public)?;
        Ok(cred)
    }
}

#[derive(Debug)]
struct LeafFiles {
    cert: PathBuf,
    key: PathBuf,
}

/// Write a new leaf's certificate (public) and key (0600), never over an
/// existing file.
fn write_leaf(identity: Identity, files: LeafFiles, out_dir: &Path) -> Result<IssuedLeaf, Error> {
    let key_pem = key_pem(&identity.key, &files.key)?;
    let cert_pem = identity.cert.to_pem();
    fsio::create_dir(out_dir)?;
    fsio::write_all_new(&[
        (files.cert.clone(), cert_pem.as_bytes(), Mode::Public),
        (files.key.clone(), key_pem.as_bytes(), Mode::Secret),
    ])?;
    Ok(IssuedLeaf {
        identity,
        cert_path: files.cert,
        key_path: files.key,
    })
}

fn key_pem(key: &SigningKey, path: &Path) -> Result<Zeroizing<String>, Error> {
    key.to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| Error::PrivateKey {
            path: path.to_path_buf(),
        })
}
