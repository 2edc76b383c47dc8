-- tapstack host store, version 1: the records and the indices of the
-- settlement rules. Uniqueness that exactly-once rests on is the
-- database's: a tap (TH1) and a wallet's ATC settle once across every
-- host instance on this database.

CREATE TABLE heads (
    terminal    BYTEA  PRIMARY KEY,           -- chain key (32 bytes)
    seq         BIGINT NOT NULL CHECK (seq > 0),
    hash        BYTEA  NOT NULL
);

CREATE TABLE records (
    terminal    BYTEA  NOT NULL,
    seq         BIGINT NOT NULL CHECK (seq > 0),
    hash        BYTEA  NOT NULL,              -- SHA-256 of bytes: the record id
    received_at BIGINT NOT NULL,
    meta        JSONB  NOT NULL,              -- disposition, flags, detail, summary
    bytes       BYTEA  NOT NULL,              -- the record exactly as the terminal signed it
    PRIMARY KEY (terminal, seq)
);

-- Accepted records only.
CREATE TABLE taps (
    th1         BYTEA  PRIMARY KEY,
    terminal    BYTEA  NOT NULL,
    seq         BIGINT NOT NULL
);

CREATE TABLE wallet_atc (
    wallet      BYTEA  NOT NULL,
    atc         BIGINT NOT NULL,
    terminal    BYTEA  NOT NULL,
    seq         BIGINT NOT NULL,
    PRIMARY KEY (wallet, atc)
);

CREATE TABLE wallet_high (
    wallet      BYTEA  PRIMARY KEY,
    atc         BIGINT NOT NULL
);

CREATE TABLE credential_uses (
    credential  BYTEA  NOT NULL,
    terminal    BYTEA  NOT NULL,
    seq         BIGINT NOT NULL,
    PRIMARY KEY (credential, terminal, seq)
);
