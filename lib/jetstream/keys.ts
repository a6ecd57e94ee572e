/**
 * The coordinators' Ed25519 keys, as text: made by `generateKeys`
 * (`host.ts --new-keys`), imported for signing (coordinators) or for
 * checking signatures (hosts).
 *
 * @module
 */

/**
 * The keys as text: a prefix that says which key it is (and keeps a
 * command line from reading it as a flag), then base64url of a PKCS #8
 * Ed25519 private key (64 characters) or of a raw public key (43).
 */
const SIGNING_PREFIX = "mpipe-sk-";

const PUBLIC_PREFIX = "mpipe-pk-";

const SIGNING_KEY_CHARS = SIGNING_PREFIX.length + 64;

const PUBLIC_KEY_CHARS = PUBLIC_PREFIX.length + 43;

/**
 * A new Ed25519 key pair for signing announcements, as text (base64url):
 * `signingKey` for the coordinators (keep it secret), `publicKey` for the
 * hosts that trust them.
 */
export async function generateKeys(): Promise<
  { signingKey: string; publicKey: string }
> {
  const pair = await crypto.subtle.generateKey(
    { name: "Ed25519" },
    true,
    ["sign", "verify"],
  ) as CryptoKeyPair;
  const text = async (format: "pkcs8" | "raw", key: CryptoKey) =>
    base64url(new Uint8Array(await crypto.subtle.exportKey(format, key)));
  return {
    signingKey: SIGNING_PREFIX + await text("pkcs8", pair.privateKey),
    publicKey: PUBLIC_PREFIX + await text("raw", pair.publicKey),
  };
}

/** The two kinds of key text `generateKeys` makes, and how each is imported. */
const KEY_KINDS = {
  signing: {
    prefix: SIGNING_PREFIX,
    chars: SIGNING_KEY_CHARS,
    format: "pkcs8",
    usage: "sign",
    other: ": that is a public key, which the hosts trust",
  },
  public: {
    prefix: PUBLIC_PREFIX,
    chars: PUBLIC_KEY_CHARS,
    format: "raw",
    usage: "verify",
    other: ": that is a signing key, which only coordinators may hold",
  },
} as const;

/** Imports a key text of `kind` made by `generateKeys`; a `TypeError` names `where` if it is not one. */
async function importKey(
  kind: keyof typeof KEY_KINDS,
  text: string,
  where: string,
): Promise<CryptoKey> {
  const { prefix, chars, format, usage, other } = KEY_KINDS[kind];
  try {
    if (text.length !== chars || !text.startsWith(prefix)) {
      throw new Error(`not a ${kind} key`);
    }
    return await crypto.subtle.importKey(
      format,
      fromBase64url(text.slice(prefix.length)),
      { name: "Ed25519" },
      false,
      [usage],
    );
  } catch {
    const otherPrefix = kind === "signing" ? PUBLIC_PREFIX : SIGNING_PREFIX;
    throw new TypeError(
      `${where} must be a ${kind} key as \`deno run jsr:@mpipe/mpipe/host --new-keys\` prints it ("${prefix}" and ${
        chars - prefix.length
      } characters of base64url), got ${text.length} characters${
        text.startsWith(otherPrefix) ? other : ""
      }`,
    );
  }
}

/** Imports a signing key made by `generateKeys`; a `TypeError` names `where` if it is not one. */
export function importSigningKey(
  text: string,
  where: string,
): Promise<CryptoKey> {
  return importKey("signing", text, where);
}

/** Imports a public key made by `generateKeys`; a `TypeError` names `where` if it is not one. */
export function importPublicKey(
  text: string,
  where: string,
): Promise<CryptoKey> {
  return importKey("public", text, where);
}

function base64url(bytes: Uint8Array): string {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replaceAll("+", "-").replaceAll("/", "_").replace(
    /=+$/,
    "",
  );
}

function fromBase64url(text: string): Uint8Array<ArrayBuffer> {
  if (!/^[A-Za-z0-9_-]*$/.test(text)) throw new Error("not base64url");
  const binary = atob(
    text.replaceAll("-", "+").replaceAll("_", "/") +
      "=".repeat((4 - text.length % 4) % 4),
  );
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}
