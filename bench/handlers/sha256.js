// SHA-256 of a 64 KiB buffer made once at module load; answers the digest in hex.
const buf = new Uint8Array(64 * 1024);
for (let i = 0; i < buf.length; i++) buf[i] = (i * 31 + 7) & 0xff;

export default {
  async fetch(request) {
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", buf));
    let hex = "";
    for (const byte of digest) hex += byte.toString(16).padStart(2, "0");
    return new Response(hex + "\n");
  },
};
