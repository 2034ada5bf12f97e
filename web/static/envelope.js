// Binary envelope (common/envelope.py): "ARSE", uint32 BE header length, JSON header, raw parts.
// The header's "parts" lists the byte length of each part, in order.

const MAGIC = [0x41, 0x52, 0x53, 0x45]; // "ARSE"
const MAX_HEADER_BYTES = 64 * 1024;

/** Parse an envelope; returns {header, parts: Uint8Array[]} or throws Error on any defect. */
export function parseEnvelope(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes.length < 8) throw new Error(`envelope truncated: ${bytes.length} bytes`);
  for (let i = 0; i < 4; i++) {
    if (bytes[i] !== MAGIC[i]) throw new Error("not an envelope: bad magic");
  }
  const hlen = new DataView(bytes.buffer, bytes.byteOffset, 8).getUint32(4, false);
  if (hlen > MAX_HEADER_BYTES || 8 + hlen > bytes.length) throw new Error("bad header length");
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + hlen)));
  const lengths = header.parts;
  if (!Array.isArray(lengths)) throw new Error("envelope header has no parts list");
  const parts = [];
  let offset = 8 + hlen;
  for (const n of lengths) {
    if (!Number.isInteger(n) || n < 0 || offset + n > bytes.length) {
      throw new Error("envelope parts exceed the payload");
    }
    parts.push(bytes.subarray(offset, offset + n));
    offset += n;
  }
  if (offset !== bytes.length) throw new Error("envelope has trailing bytes");
  delete header.parts;
  return { header, parts };
}

/** Decode an image part (JPEG/PNG bytes) into an ImageBitmap without colour conversion. */
export function decodeImage(part, type) {
  const blob = new Blob([part], { type });
  return createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
}

/** Read the first channel of an 8-bit greyscale PNG bitmap: the class ids (trainIds). */
export function bitmapLabels(bitmap) {
  const { width, height } = bitmap;
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const labels = new Uint8Array(width * height);
  for (let i = 0, j = 0; i < labels.length; i++, j += 4) labels[i] = rgba[j];
  return { labels, width, height };
}
