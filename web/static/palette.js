// Cityscapes trainIds: names and colours (index = trainId), 255 = ignore (drawn transparent).

export const CLASS_NAMES = [
  "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
  "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
  "motorcycle", "bicycle",
];

export const PALETTE = [
  [128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153],
  [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
  [70, 130, 180], [220, 20, 60], [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100],
  [0, 80, 100], [0, 0, 230], [119, 11, 32],
];

export const IGNORE = 255;

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
