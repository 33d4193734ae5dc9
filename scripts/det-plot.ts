import sharp from 'sharp';

export interface DetSeries {
  label: string;
  colour: string;
  dashed?: boolean;
  points: { fpir: number; fnir: number }[];
  /** The service's operating point on this curve. */
  marker?: { fpir: number; fnir: number };
}

const W = 760;
const H = 520;
const PAD = { left: 70, right: 200, top: 40, bottom: 60 };
const X_DECADES = [-5, 0]; // FPIR 1e-5 … 1
const Y_RANGE = [0, 1]; // FNIR, linear

/**
 * A DET plot (FNIR against FPIR, FPIR on a log axis) as a PNG: drawn as SVG and rasterised by
 * sharp, so the README's figure is produced by `npm run eval:identify`, never drawn by hand.
 */
export async function detPlotPng(title: string, series: DetSeries[], file: string): Promise<void> {
  const x = (fpir: number) => PAD.left + ((Math.log10(Math.max(fpir, 10 ** X_DECADES[0])) - X_DECADES[0]) / (X_DECADES[1] - X_DECADES[0])) * (W - PAD.left - PAD.right);
  const y = (fnir: number) => PAD.top + (1 - (fnir - Y_RANGE[0]) / (Y_RANGE[1] - Y_RANGE[0])) * (H - PAD.top - PAD.bottom);
  const grid: string[] = [];
  for (let d = X_DECADES[0]; d <= X_DECADES[1]; d++) {
    grid.push(`<line x1="${x(10 ** d)}" y1="${y(0)}" x2="${x(10 ** d)}" y2="${y(1)}" stroke="#ddd"/>`);
    grid.push(`<text x="${x(10 ** d)}" y="${y(0) + 20}" text-anchor="middle">${d === 0 ? '1' : `1e${d}`}</text>`);
  }
  for (let f = 0; f <= 1.0001; f += 0.2) {
    grid.push(`<line x1="${x(10 ** X_DECADES[0])}" y1="${y(f)}" x2="${x(1)}" y2="${y(f)}" stroke="#ddd"/>`);
    grid.push(`<text x="${PAD.left - 8}" y="${y(f) + 4}" text-anchor="end">${f.toFixed(1)}</text>`);
  }
  const target = `<line x1="${x(1e-3)}" y1="${y(0)}" x2="${x(1e-3)}" y2="${y(1)}" stroke="#999" stroke-dasharray="4 4"/><text x="${x(1e-3) + 4}" y="${PAD.top + 12}" fill="#666">FPIR 0.1 %</text>`;
  const curves = series.map((s, i) => {
    const path = s.points
      .filter((p) => p.fpir > 0)
      .sort((a, b) => a.fpir - b.fpir)
      .map((p, k) => `${k === 0 ? 'M' : 'L'}${x(p.fpir).toFixed(1)},${y(p.fnir).toFixed(1)}`)
      .join(' ');
    const marker = s.marker ? `<circle cx="${x(s.marker.fpir)}" cy="${y(s.marker.fnir)}" r="5" fill="${s.colour}"/>` : '';
    const legendY = PAD.top + 20 + i * 22;
    const legend = `<line x1="${W - PAD.right + 15}" y1="${legendY - 4}" x2="${W - PAD.right + 40}" y2="${legendY - 4}" stroke="${s.colour}" stroke-width="2.5"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/><text x="${W - PAD.right + 46}" y="${legendY}">${escape(s.label)}</text>`;
    return `<path d="${path}" fill="none" stroke="${s.colour}" stroke-width="2.5"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>${marker}${legend}`;
  });
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="DejaVu Sans, sans-serif" font-size="13">
<rect width="100%" height="100%" fill="white"/>
<text x="${W / 2 - 60}" y="24" text-anchor="middle" font-size="15" font-weight="bold">${escape(title)}</text>
${grid.join('\n')}${target}
<rect x="${PAD.left}" y="${PAD.top}" width="${W - PAD.left - PAD.right}" height="${H - PAD.top - PAD.bottom}" fill="none" stroke="#333"/>
<text x="${(PAD.left + W - PAD.right) / 2}" y="${H - 15}" text-anchor="middle">FPIR (strangers identified as somebody), log scale</text>
<text transform="translate(20 ${(PAD.top + H - PAD.bottom) / 2}) rotate(-90)" text-anchor="middle">FNIR (enrolled people not identified)</text>
${curves.join('\n')}
<text x="${W - PAD.right + 15}" y="${H - PAD.bottom}" fill="#555" font-size="11">● the service's default rule</text>
</svg>`;
  await sharp(Buffer.from(svg)).png().toFile(file);
}

function escape(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}
