/** The artifact store service, for inputs held by reference and for outputs too big to inline. */

import { createHash } from "node:crypto";

import { type ChannelCredentials, type ChannelOptions, Metadata, status } from "@grpc/grpc-js";

import type { Artifact } from "./gen/dagwire/v1/common";
import { ArtifactStoreServiceClient, type PutArtifactResponse } from "./gen/dagwire/v1/store_service";
import { AgentError } from "./reverse";

/** Upload chunk size: well under any sensible message limit. */
const CHUNK_BYTES = 1024 * 1024;

/** Clients of the store services the adapter talks to, one long-lived channel per address. */
export class Stores {
  private readonly clients = new Map<string, ArtifactStoreServiceClient>();

  constructor(
    /** The configured store (`DAGWIRE_STORE_ADDR`): uploads, and references without address. */
    readonly defaultAddr: string,
    /** The credentials and options of a new channel (TLS files are read when one is made). */
    private readonly connect: (address: string) => {
      credentials: ChannelCredentials;
      options: ChannelOptions;
    },
  ) {}

  /** The content of an input artifact: inline, or streamed from its store. */
  async content(artifact: Artifact, metadata: Metadata): Promise<Buffer> {
    const body = artifact.body;
    if (body?.$case === "content") {
      return body.value;
    }
    if (artifact.artifactId === "") {
      return Buffer.alloc(0);
    }
    const address = (body?.$case === "reference" && body.value.storeAddress) || this.defaultAddr;
    const chunks: Buffer[] = [];
    try {
      const stream = this.client(address).getArtifact({ artifactId: artifact.artifactId }, metadata);
      for await (const reply of stream as AsyncIterable<{ part?: { $case: string; value: unknown } }>) {
        if (reply.part?.$case === "chunk") {
          chunks.push(reply.part.value as Buffer);
        }
      }
    } catch (err) {
      throw storeError(
        err,
        `reading input artifact ${artifact.artifactId} (${artifact.name}) from the store at ${address}`,
      );
    }
    return Buffer.concat(chunks);
  }

  /** Upload `content` to the configured store; the returned artifact refers to it. */
  async put(
    header: { name: string; mediaType: string; runId: string; nodeId: string },
    content: Buffer,
    metadata: Metadata,
  ): Promise<Artifact> {
    const sha256 = createHash("sha256").update(content).digest("hex");
    const reply = await new Promise<PutArtifactResponse>((resolve, reject) => {
      const call = this.client(this.defaultAddr).putArtifact(metadata, (err, r) =>
        err ? reject(err) : resolve(r),
      );
      call.write({
        part: { $case: "header", value: { ...header, metadata: {}, sha256, size: content.length } },
      });
      for (let at = 0; at < content.length; at += CHUNK_BYTES) {
        call.write({ part: { $case: "chunk", value: content.subarray(at, at + CHUNK_BYTES) } });
      }
      call.end();
    }).catch((err: unknown) => {
      throw storeError(err, `uploading output ${header.name} to the store at ${this.defaultAddr}`);
    });
    if (reply.artifact === undefined) {
      throw new AgentError(
        status.INTERNAL,
        `the store at ${this.defaultAddr} answered PutArtifact without an artifact`,
      );
    }
    return { ...reply.artifact, body: { $case: "reference", value: { storeAddress: this.defaultAddr } } };
  }

  close(): void {
    for (const client of this.clients.values()) {
      client.close();
    }
    this.clients.clear();
  }

  private client(address: string): ArtifactStoreServiceClient {
    let client = this.clients.get(address);
    if (client === undefined) {
      const { credentials, options } = this.connect(address);
      client = new ArtifactStoreServiceClient(address, credentials, options);
      this.clients.set(address, client);
    }
    return client;
  }
}

/** A store failure as a retryable UNAVAILABLE (or NOT_FOUND, never retried) naming what failed. */
function storeError(err: unknown, what: string): AgentError {
  const e = err as { code?: number; details?: string; message?: string };
  const detail = e.details ?? e.message ?? String(err);
  if (e.code === status.NOT_FOUND) {
    return new AgentError(status.FAILED_PRECONDITION, `${what}: not found: ${detail}`);
  }
  return new AgentError(status.UNAVAILABLE, `${what} failed: ${detail}`);
}
