import { createRequire } from 'node:module';
import path from 'node:path';
import type * as TfNamespace from '@tensorflow/tfjs';
import type { Config, Human } from '@vladmandic/human';
import { ModelFiles } from './models.ts';

const require = createRequire(import.meta.url);

/** URL scheme of the model loader below; Human's model paths are resolved under it. */
const MODEL_SCHEME = 'authface-models://';

export type Tf = typeof TfNamespace;
export type Backend = 'wasm' | 'tfjs-node';

/** The slice of @vladmandic/face-api the engine uses (its bundled typings do not resolve under NodeNext). */
export interface FaceApiNet {
  loadFromWeightMap(weights: Record<string, unknown>): void;
}
export interface FaceApi {
  nets: {
    faceLandmark68Net: FaceApiNet & {
      detectLandmarks(input: TfNamespace.Tensor3D): Promise<{ positions: { x: number; y: number }[] }>;
    };
    faceRecognitionNet: FaceApiNet & {
      computeFaceDescriptor(input: TfNamespace.Tensor3D[]): Promise<Float32Array[] | Float32Array>;
    };
    ssdMobilenetv1: FaceApiNet;
  };
  // the full face-api pipeline, used by the benchmark for comparison
  detectAllFaces(input: TfNamespace.Tensor3D, options?: unknown): {
    withFaceLandmarks(): { withFaceDescriptors(): Promise<{ descriptor: Float32Array }[]> };
  };
  SsdMobilenetv1Options: new (options: { minConfidence?: number }) => unknown;
}

export interface Runtime {
  tf: Tf;
  human: Human;
  faceapi: FaceApi;
  backend: Backend;
}

/** An installed package's directory, found through its main entry (some do not export ./package.json). */
export function packageDir(name: string): string {
  let dir = path.dirname(require.resolve(name));
  while (path.basename(dir) !== name.split('/').pop()) dir = path.dirname(dir);
  return dir;
}

function tfjsNodeInstalled(): boolean {
  try {
    require.resolve('@tensorflow/tfjs-node');
    return true;
  } catch {
    return false;
  }
}

/**
 * Loads TensorFlow.js, Human and face-api once per thread. Models are read from models/ through
 * an IO handler of our own (`authface-models://`) that checks their checksums: Node's fetch cannot
 * read files, nothing may be fetched from the network at run time, and tfjs-node already claims
 * `file://` URLs (two handlers for one URL make tfjs refuse to load).
 */
export async function loadRuntime(preferred: 'auto' | Backend, models = new ModelFiles()): Promise<Runtime> {
  const backend: Backend =
    preferred === 'tfjs-node' || (preferred === 'auto' && tfjsNodeInstalled()) ? 'tfjs-node' : 'wasm';
  // the emscripten glue of the wasm backend installs process handlers that rethrow every error
  // with a megabyte of minified source; remember the handlers so we can drop what it adds
  const before = {
    uncaughtException: new Set(process.listeners('uncaughtException')),
    unhandledRejection: new Set(process.listeners('unhandledRejection')),
  };

  const tf = require(backend === 'wasm' ? '@tensorflow/tfjs' : '@tensorflow/tfjs-node') as Tf;
  const humanDir = packageDir('@vladmandic/human');
  const { Human: HumanClass } = require(
    path.join(humanDir, 'dist', backend === 'wasm' ? 'human.node-wasm.js' : 'human.node.js'),
  ) as { Human: new (config: Partial<Config>) => Human };
  const faceapi = require(
    backend === 'wasm' ? '@vladmandic/face-api/dist/face-api.node-wasm.js' : '@vladmandic/face-api/dist/face-api.node.js',
  ) as FaceApi;

  registerModelLoader(tf, models);
  const wasmDir = path.join(packageDir('@tensorflow/tfjs-backend-wasm'), 'dist') + path.sep;
  if (backend === 'wasm') {
    (require('@tensorflow/tfjs-backend-wasm') as { setWasmPaths(p: string): void }).setWasmPaths(wasmDir);
  }

  const human = new HumanClass({
    backend: backend === 'wasm' ? 'wasm' : 'tensorflow',
    wasmPath: wasmDir,
    modelBasePath: `${MODEL_SCHEME}human/`,
    debug: false,
    cacheSensitivity: 0, // every frame is analysed in full: no result reuse between frames
    face: {
      enabled: true,
      detector: { rotation: false, maxDetected: 5, minConfidence: 0.1, return: false },
      mesh: { enabled: true },
      iris: { enabled: false },
      description: { enabled: false },
      emotion: { enabled: false },
      antispoof: { enabled: true },
      liveness: { enabled: true },
      attention: { enabled: false },
    },
    body: { enabled: false },
    hand: { enabled: false },
    object: { enabled: false },
    gesture: { enabled: false },
    segmentation: { enabled: false },
    filter: { enabled: false },
  });
  await human.load();
  await human.tf.ready();

  loadFaceApiNet(tf, models, faceapi.nets.faceLandmark68Net, 'face-api/face_landmark_68_model-weights_manifest.json');

  for (const listener of process.listeners('uncaughtException')) {
    if (!before.uncaughtException.has(listener)) process.removeListener('uncaughtException', listener);
  }
  for (const listener of process.listeners('unhandledRejection')) {
    if (!before.unhandledRejection.has(listener)) process.removeListener('unhandledRejection', listener);
  }
  return { tf, human, faceapi, backend };
}

export function loadFaceApiNet(tf: Tf, models: ModelFiles, net: FaceApiNet, manifestName: string): void {
  const groups = models.readJson<{ paths: string[]; weights: unknown[] }[]>(manifestName);
  const { specs, data } = models.weights(manifestName, groups);
  net.loadFromWeightMap(tf.io.decodeWeights(data, specs as TfNamespace.io.WeightsManifestEntry[]));
}

let loaderRegistered = false;
function registerModelLoader(tf: Tf, models: ModelFiles): void {
  if (loaderRegistered) return;
  loaderRegistered = true;
  const prefix = MODEL_SCHEME;
  // tfjs routers answer null for URLs they do not handle, which its typings do not admit
  tf.io.registerLoadRouter(((url: string | string[]) => {
    if (typeof url !== 'string' || !url.startsWith(prefix)) return null;
    const name = url.slice(prefix.length);
    return {
      async load() {
        const json = models.readJson<{
          modelTopology: object;
          format?: string;
          generatedBy?: string;
          convertedBy?: string;
          userDefinedMetadata?: Record<string, unknown>;
          signature?: object;
          weightsManifest: { paths: string[]; weights: unknown[] }[];
        }>(name);
        const { specs, data } = models.weights(name, json.weightsManifest);
        return {
          modelTopology: json.modelTopology,
          format: json.format,
          generatedBy: json.generatedBy,
          convertedBy: json.convertedBy,
          userDefinedMetadata: json.userDefinedMetadata,
          signature: json.signature,
          weightSpecs: specs as TfNamespace.io.WeightsManifestEntry[],
          weightData: data,
        };
      },
    };
  }) as unknown as Parameters<Tf["io"]["registerLoadRouter"]>[0]);
}
