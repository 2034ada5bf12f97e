// Cityscapes trainIds: names and colours (index = trainId), 255 = ignore (drawn transparent).
// The server sends them in the WebSocket hello (their one home is common/classes.py);
// setClasses fills these arrays in place, so importers keep live references.

export const CLASS_NAMES = [];

export const PALETTE = [];

export let IGNORE = 255;

/** Take the hello's {names, colours, ignore}. */
export function setClasses(classes) {
  CLASS_NAMES.splice(0, CLASS_NAMES.length, ...classes.names);
  PALETTE.splice(0, PALETTE.length, ...classes.colours);
  IGNORE = classes.ignore;
}

/** Number-key shortcuts 1..9, 0 -> the classes the scenes show most. */
export const SHORTCUT_CLASSES = [0, 1, 2, 4, 5, 8, 9, 10, 11, 13];

export function cssColor(cls) {
  const [r, g, b] = PALETTE[cls];
  return `rgb(${r}, ${g}, ${b})`;
}

/** Class ids -> RGBA ImageData (ignore and unknown ids transparent). */
export function colorize(labels, width, height, alpha = 255) {
  const image = new ImageData(width, height);
  const out = image.data;
  for (let i = 0, j = 0; i < labels.length; i++, j += 4) {
    const colour = PALETTE[labels[i]];
    if (colour === undefined) continue;
    out[j] = colour[0];
    out[j + 1] = colour[1];
    out[j + 2] = colour[2];
    out[j + 3] = alpha;
  }
  return image;
}
