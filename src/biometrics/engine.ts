import { type PresentationAttackModel, loadPresentationAttackModel } from './presentation-attack.ts';
import type { Tensor3D } from '@tensorflow/tfjs';
import type { FaceResult } from '@vladmandic/human';
import { type Point, type RgbImage, CHIP_SIZE, MESH_TO_68, MIRROR_68, averagePoints, chipTransform, extractChip } from './alignment.ts';
import { type Artefacts, measureArtefacts } from './artefacts.ts';
import { decodeImage } from './image.ts';
import type { AlignedFace, Describer, Framing } from './matchers/describer.ts';
import { dlibDescriber } from './matchers/dlib-resnet.ts';
import { DLIB_RESNET, type Embeddings, type ModelId, PRIMARY_MODEL } from './matchers/index.ts';
import { mobileFaceNetDescriber } from './matchers/mobilefacenet.ts';
import { ModelFiles } from './models.ts';
import { qualityProblems } from './quality.ts';
import { type Backend, type Runtime, loadRuntime } from './runtime.ts';
import type { AnalyzeOptions, Box, FaceObservation, FrameAnalysis, QualityLimits } from './types.ts';

const LANDMARK_INPUT = 112; // face-api's landmark net input side
const RETRY_PADDING = 0.3; // fraction of the longer side added around tight crops on a second try
/**
 * A second face makes a capture frame ambiguous when the detector is confident about it, it is at
 * least half the subject's size and it is not a part of the subject's own face (the low-threshold
 * detector sometimes boxes an eye or a cheek).
 */
const CONFIDENT_DETECTION = 0.5;
/**
 * The mesh framing runs the landmark net once, on the crop itself: on LFW its mirror image's pass
 * changed MobileFaceNet's accuracy by one pair in 3,000 and cost 21 ms a frame (README, "The face
 * engine and its accuracy").
 */
const MESH_FRAMING_MIRROR = false;
const MESH_BOX_SCALE = 1.15;
const COMPETING_FACE_RATIO = 0.5;
const MAX_OVERLAP = 0.3;

/** How the engine loads each model's describer (matchers/): one entry per model. */
const DESCRIBERS: Record<ModelId, (rt: Runtime, models: ModelFiles) => Promise<Describer>> = {
  'mobilefacenet-512/arcface5-2': (_rt, models) => mobileFaceNetDescriber(models),
  'dlib-resnet-v1/authface-align-1': async (rt, models) => dlibDescriber(rt, models),
};

export interface EngineOptions {
  backend: 'auto' | Backend;
  maxPixels: number;
  quality: QualityLimits;
}

/**
 * The face pipeline, chosen by measurement on LFW (README, "Accuracy"):
 * Human's BlazeFace + face mesh find the face and its pose; face-api's 68-point landmark net runs
 * on a square crop of the detector box and on its mirror image; those two and the mesh (mapped to
 * the 68-point layout) are averaged into one landmark set; a dlib-style similarity chip is cut with
 * it for the quality statistics; then each model asked for (`AnalyzeOptions.models`) describes the
 * face from those landmarks (matchers/). A model is loaded on the first frame that asks for it.
 * Runs inside a worker thread: no HTTP, no storage, and pixels are dropped after each call.
 */
export class FaceEngine {
  readonly #describers = new Map<ModelId, Promise<Describer>>();
  readonly #models = new ModelFiles();

  private constructor(
    private readonly rt: Runtime,
    private readonly options: EngineOptions,
  ) {}

  static async create(options: EngineOptions, runtime?: Runtime): Promise<FaceEngine> {
    const engine = new FaceEngine(runtime ?? (await loadRuntime(options.backend)), options);
    await engine.warmUp();
    return engine;
  }

  get backend(): Backend {
    return this.rt.backend;
  }

  async analyze(bytes: Uint8Array, opts: AnalyzeOptions): Promise<FrameAnalysis> {
    const started = performance.now();
    const image = await decodeImage(bytes, this.options.maxPixels);
    return this.analyzeImage(image, opts, started);
  }

  async analyzeImage(image: RgbImage, opts: AnalyzeOptions, started = performance.now()): Promise<FrameAnalysis> {
    const { tf } = this.rt;
    const pixels = tf.tensor3d(image.data, [image.height, image.width, 3], 'int32');
    try {
      // presentation-attack models only matter for live captures, not for photo evaluations
      const pad = opts.mode === 'capture';
      let faces = await this.detect(pixels, image, 0, pad);
      if (faces.length === 0) {
        // BlazeFace needs some margin around a face: retry tight crops on a padded canvas
        faces = await this.detect(pixels, image, Math.round(RETRY_PADDING * Math.max(image.width, image.height)), pad);
      }
      const subject = pickSubject(faces, image, opts.mode);
      const base = { width: image.width, height: image.height, faceCount: faces.length, boxes: faces.map(toBox) };
      if (!subject) {
        return { ...base, face: null, embeddings: {}, problems: ['no_face'], millis: performance.now() - started };
      }
      const models = opts.models ?? [PRIMARY_MODEL];
      const aligned = this.#aligned(pixels, image, subject);
      const embeddings: Embeddings = {};
      for (const model of models) embeddings[model] = await (await this.#describer(model)).describe(aligned);
      // the quality statistics are read on a dlib-style chip: of the framing dlib uses when it runs
      const chip150 = await aligned.chip150(models.includes(DLIB_RESNET.id) ? 'detector' : 'mesh');
      const capture = opts.mode === 'capture';
      // on the mesh's box: it holds the face when the detector's is off, and the score moves with the box (README, "Passive anti-spoofing")
      const liveScore = capture ? await (await this.#presentationAttack()).liveScore(image, meshBox(subject)) : null;
      const face = observe(subject, chip150, capture ? measureArtefacts(image, toBox(subject)) : NO_ARTEFACTS, liveScore);
      const problems = qualityProblems(face, this.options.quality);
      if (opts.mode === 'capture' && faces.some((f) => competes(f, subject))) problems.unshift('multiple_faces');
      return { ...base, face, embeddings, problems, millis: performance.now() - started };
    } finally {
      pixels.dispose();
    }
  }

  /** Faces found by Human, in image coordinates; `pad` grey pixels are added around the image first. */
  private async detect(pixels: Tensor3D, image: RgbImage, pad: number, attackModels: boolean): Promise<FaceResult[]> {
    const { tf, human } = this.rt;
    const input = tf.tidy(() => {
      const padded = pad > 0 ? tf.pad(pixels, [[pad, pad], [pad, pad], [0, 0]], 128) : pixels;
      return padded.expandDims(0);
    });
    try {
      const result = await human.detect(input, {
        face: { antispoof: { enabled: attackModels }, liveness: { enabled: attackModels } },
      });
      return result.face.map((f) => (pad > 0 ? shiftFace(f, -pad) : f)).filter((f) => faceSide(f) > 0 && inside(f, image));
    } finally {
      input.dispose();
    }
  }

  /**
   * The 68 landmarks of the face, found by face-api's landmark net on a square crop of `box` (and,
   * with `mirror`, on its mirror image too), averaged with the mesh mapped to the 68-point layout.
   */
  private async landmarks(pixels: Tensor3D, image: RgbImage, face: FaceResult, box: Box, mirror: boolean): Promise<Point[]> {
    const side = Math.max(box.width, box.height);
    const x0 = box.x + box.width / 2 - side / 2;
    const y0 = box.y + box.height / 2 - side / 2;
    const { tf, faceapi } = this.rt;
    const crops = tf.tidy(() => {
      const cropBox = [[y0 / (image.height - 1), x0 / (image.width - 1), (y0 + side) / (image.height - 1), (x0 + side) / (image.width - 1)]];
      const crop = tf.image.cropAndResize(pixels.toFloat().expandDims(0) as never, cropBox, [0], [LANDMARK_INPUT, LANDMARK_INPUT], 'bilinear', 128);
      return mirror ? [crop.squeeze([0]) as Tensor3D, tf.reverse(crop, 2).squeeze([0]) as Tensor3D] : [crop.squeeze([0]) as Tensor3D];
    });
    try {
      const toImage = (p: { x: number; y: number }): Point => [x0 + (p.x / LANDMARK_INPUT) * side, y0 + (p.y / LANDMARK_INPUT) * side];
      let net = (await faceapi.nets.faceLandmark68Net.detectLandmarks(crops[0])).positions.map(toImage);
      if (mirror) {
        const m = (await faceapi.nets.faceLandmark68Net.detectLandmarks(crops[1])).positions;
        net = averagePoints(net, MIRROR_68.map((i) => toImage({ x: LANDMARK_INPUT - m[i].x, y: m[i].y })));
      }
      const mesh = MESH_TO_68.map((i) => [face.mesh[i][0], face.mesh[i][1]] as Point);
      return averagePoints(net, mesh);
    } finally {
      for (const c of crops) c.dispose();
    }
  }

  /**
   * The face as the models see it, each of its framings computed once and only when a model (or
   * the quality statistics) asks for it: `detector`, the landmark net on the detector's box and on
   * its mirror image (dlib's, unchanged since its templates were made); `mesh`, on the box of the
   * face mesh, which frames the face better when the detector's box is off (MobileFaceNet's).
   */
  #aligned(pixels: Tensor3D, image: RgbImage, subject: FaceResult): AlignedFace {
    const landmarks = new Map<Framing, Promise<Point[]>>();
    const chips = new Map<Framing, Promise<Float32Array>>();
    const framed = (framing: Framing) => {
      let found = landmarks.get(framing);
      if (!found) {
        found = framing === 'detector' ? this.landmarks(pixels, image, subject, toBox(subject), true) : this.landmarks(pixels, image, subject, meshBox(subject), MESH_FRAMING_MIRROR);
        landmarks.set(framing, found);
      }
      return found;
    };
    return {
      image,
      landmarks: framed,
      chip150(framing) {
        let chip = chips.get(framing);
        if (!chip) {
          chip = framed(framing).then((l) => extractChip(image, chipTransform(l)));
          chips.set(framing, chip);
        }
        return chip;
      },
    };
  }

  #pad: Promise<PresentationAttackModel> | undefined;

  #presentationAttack(): Promise<PresentationAttackModel> {
    this.#pad ??= loadPresentationAttackModel(this.#models);
    return this.#pad;
  }

  #describer(model: ModelId): Promise<Describer> {
    let describer = this.#describers.get(model);
    if (!describer) {
      describer = DESCRIBERS[model](this.rt, this.#models);
      this.#describers.set(model, describer);
    }
    return describer;
  }

  /** The first inference of each model compiles kernels; do it before taking traffic (the primary model and the anti-spoofing network). */
  private async warmUp(): Promise<void> {
    const size = 160;
    const data = new Uint8Array(size * size * 3).fill(128);
    await this.analyzeImage({ data, width: size, height: size }, { mode: 'capture' });
    await this.#describer(PRIMARY_MODEL);
    // a grey square has no face for it: the anti-spoofing network is loaded here, not at the first capture
    await this.#presentationAttack();
  }
}

function toBox(f: FaceResult): Box {
  return { x: f.box[0], y: f.box[1], width: f.box[2], height: f.box[3] };
}

/**
 * The landmark crop of the mesh framing: the bounding box of the face mesh (Human's mesh refines
 * its own crop, so it holds the face even when the detector box is off), grown by MESH_BOX_SCALE
 * about its centre. The mesh box alone is tighter than the crops the landmark net expects: on bbt's
 * tight face crops one probe of 32 then lost its rank-1 (README, "The face engine").
 */
function meshBox(f: FaceResult): Box {
  let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
  for (const [x, y] of f.mesh) {
    x0 = Math.min(x0, x);
    y0 = Math.min(y0, y);
    x1 = Math.max(x1, x);
    y1 = Math.max(y1, y);
  }
  const [w, h] = [(x1 - x0) * MESH_BOX_SCALE, (y1 - y0) * MESH_BOX_SCALE];
  return { x: (x0 + x1) / 2 - w / 2, y: (y0 + y1) / 2 - h / 2, width: w, height: h };
}

function faceSide(f: FaceResult): number {
  return Math.max(f.box[2], f.box[3]);
}

function competes(f: FaceResult, subject: FaceResult): boolean {
  if (f === subject || f.boxScore < CONFIDENT_DETECTION) return false;
  if (faceSide(f) < COMPETING_FACE_RATIO * faceSide(subject)) return false;
  const [ax, ay, aw, ah] = f.box;
  const [bx, by, bw, bh] = subject.box;
  const iw = Math.max(0, Math.min(ax + aw, bx + bw) - Math.max(ax, bx));
  const ih = Math.max(0, Math.min(ay + ah, by + bh) - Math.max(ay, by));
  return (iw * ih) / (aw * ah) < MAX_OVERLAP;
}

function inside(f: FaceResult, image: RgbImage): boolean {
  const cx = f.box[0] + f.box[2] / 2;
  const cy = f.box[1] + f.box[3] / 2;
  return cx >= 0 && cy >= 0 && cx < image.width && cy < image.height;
}

function shiftFace(f: FaceResult, d: number): FaceResult {
  return {
    ...f,
    box: [f.box[0] + d, f.box[1] + d, f.box[2], f.box[3]],
    mesh: f.mesh.map((p) => [p[0] + d, p[1] + d, p[2]] as typeof p),
  };
}

function pickSubject(faces: FaceResult[], image: RgbImage, mode: AnalyzeOptions['mode']): FaceResult | undefined {
  if (faces.length === 0) return undefined;
  if (mode === 'capture') {
    const confident = faces.filter((f) => f.boxScore >= CONFIDENT_DETECTION);
    const pool = confident.length > 0 ? confident : faces;
    return pool.reduce((a, b) => (faceSide(b) > faceSide(a) ? b : a));
  }
  const dist = (f: FaceResult) =>
    Math.hypot(f.box[0] + f.box[2] / 2 - image.width / 2, f.box[1] + f.box[3] / 2 - image.height / 2);
  return faces.reduce((a, b) => (dist(b) < dist(a) ? b : a));
}

const RAD = 180 / Math.PI;

const NO_ARTEFACTS: Artefacts = { border: 0, moire: 0 };

function observe(face: FaceResult, chip: Float32Array, artefacts: Artefacts, liveScore: number | null): FaceObservation {
  const angle = face.rotation?.angle ?? { yaw: 0, pitch: 0, roll: 0 };
  const box = toBox(face);
  const { sharpness, brightness, faceColor } = chipStatistics(chip);
  return {
    box,
    confidence: face.boxScore,
    // Human's angles are the other way round: negative yaw = nose towards image right
    pose: { yaw: -angle.yaw * RAD, pitch: -angle.pitch * RAD, roll: angle.roll * RAD },
    eyeOpenness: eyeOpenness(face.mesh),
    sharpness,
    brightness,
    faceColor,
    antispoof: face.real ?? 0,
    liveness: face.live ?? 0,
    liveScore,
    artefacts,
  };
}

/** Eyelid gap over eye width from the mesh (MediaPipe vertex numbering), per eye. */
function eyeOpenness(mesh: FaceResult['mesh']): { left: number; right: number } {
  const ratio = (upper: number, lower: number, inner: number, outer: number) => {
    const width = Math.hypot(mesh[inner][0] - mesh[outer][0], mesh[inner][1] - mesh[outer][1]);
    return width > 0 ? Math.hypot(mesh[upper][0] - mesh[lower][0], mesh[upper][1] - mesh[lower][1]) / width : 0;
  };
  // the person's right eye is 33/133 (image left), the left eye 362/263
  return { right: ratio(159, 145, 133, 33), left: ratio(386, 374, 362, 263) };
}

/**
 * Sharpness (variance of the Laplacian over the variance of the grey face region), brightness
 * (mean grey level) and the mean
 * colour of forehead and cheek patches. On the aligned chip these regions sit at fixed places.
 */
function chipStatistics(chip: Float32Array): { sharpness: number; brightness: number; faceColor: [number, number, number] } {
  const n = CHIP_SIZE;
  const grey = new Float32Array(n * n);
  let sum = 0;
  for (let i = 0; i < n * n; i++) {
    grey[i] = 0.299 * chip[i * 3] + 0.587 * chip[i * 3 + 1] + 0.114 * chip[i * 3 + 2];
    sum += grey[i];
  }
  // Laplacian over the central face region only (the border holds background), divided by the
  // region's own contrast so a dim or low-contrast face is not mistaken for a blurred one
  const lo = Math.round(n * 0.25);
  const hi = Math.round(n * 0.75);
  let lapSum = 0;
  let lapSq = 0;
  let greySum = 0;
  let greySq = 0;
  let count = 0;
  for (let y = lo; y < hi; y++) {
    for (let x = lo; x < hi; x++) {
      const i = y * n + x;
      const lap = grey[i - 1] + grey[i + 1] + grey[i - n] + grey[i + n] - 4 * grey[i];
      lapSum += lap;
      lapSq += lap * lap;
      greySum += grey[i];
      greySq += grey[i] * grey[i];
      count++;
    }
  }
  const lapVar = lapSq / count - (lapSum / count) ** 2;
  const greyVar = Math.max(greySq / count - (greySum / count) ** 2, 1);
  const patches: [number, number, number, number][] = [
    [0.42, 0.24, 0.58, 0.3], // forehead
    [0.28, 0.55, 0.36, 0.63], // the person's right cheek
    [0.64, 0.55, 0.72, 0.63], // left cheek
  ];
  const colour: [number, number, number] = [0, 0, 0];
  let pixels = 0;
  for (const [x0, y0, x1, y1] of patches) {
    for (let y = Math.round(y0 * n); y < Math.round(y1 * n); y++) {
      for (let x = Math.round(x0 * n); x < Math.round(x1 * n); x++) {
        const o = (y * n + x) * 3;
        colour[0] += chip[o];
        colour[1] += chip[o + 1];
        colour[2] += chip[o + 2];
        pixels++;
      }
    }
  }
  return {
    sharpness: lapVar / greyVar,
    brightness: sum / (n * n),
    faceColor: [colour[0] / pixels, colour[1] / pixels, colour[2] / pixels],
  };
}
