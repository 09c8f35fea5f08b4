/**
 * gRPC targets of dagwire services (docs/targets.md), shared by the node client and the
 * TypeScript adapters: which peer addresses are accepted, and the service config every channel
 * to a peer uses. No dependencies, so that an adapter can import it on its own
 * (`@dagwire/node-client/targets`).
 */

/**
 * Why `target` is not a gRPC target a dagwire peer dials, or `undefined` when it is one:
 * `host:port`, `dns:///name:port` or `dns://resolver/name:port` (every address of the name,
 * balanced round-robin: a Kubernetes headless service), or `ipv4:A:PORT,B:PORT` (a fixed list
 * of replicas). grpc-js resolves every one of these itself. The reason reads after the quoted
 * value, as in `DAGWIRE_STORE_ADDR="dns:///store" is not dns:///name:port (...)`.
 */
export function targetProblem(target: string): string | undefined {
  if (target.startsWith("dns:")) {
    let rest = target.slice("dns:".length);
    if (rest.startsWith("//")) {
      const slash = rest.indexOf("/", 2);
      rest = slash < 0 ? "" : rest.slice(slash + 1);
    }
    return isHostPort(rest)
      ? undefined
      : "is not dns:///name:port (the port is required; for example dns:///dagwire-orchestrator:50051)";
  }
  if (target.startsWith("ipv4:")) {
    for (const item of target.slice("ipv4:".length).split(",")) {
      const match = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3}):(\d{1,5})$/.exec(item.trim());
      const ok = match !== null && match.slice(1, 5).every((o) => Number(o) <= 255) && validPort(match[5]);
      if (!ok) {
        return (
          `has ${JSON.stringify(item)}, which is not an IPv4 address with a port ` +
          "(for example ipv4:10.0.0.5:50051,10.0.0.6:50051)"
        );
      }
    }
    return undefined;
  }
  if (target.includes("://") || !isHostPort(target)) {
    return "is not a host:port address (for example 127.0.0.1:50051), dns:///name:port or ipv4:A:PORT,B:PORT";
  }
  return undefined;
}

/**
 * The gRPC service config of a channel to a dagwire service (docs/targets.md): round-robin over
 * every address the target resolves to, and retries on UNAVAILABLE (a replica died) only of the
 * calls safe to repeat, `safeMethods` (service name to method names).
 */
export function serviceConfig(safeMethods: Record<string, string[]>): string {
  return JSON.stringify({
    loadBalancingConfig: [{ round_robin: {} }],
    methodConfig: [
      {
        name: Object.entries(safeMethods).flatMap(([service, methods]) =>
          methods.map((method) => ({ service, method })),
        ),
        retryPolicy: {
          maxAttempts: 4,
          initialBackoff: "0.1s",
          maxBackoff: "0.5s",
          backoffMultiplier: 2,
          retryableStatusCodes: ["UNAVAILABLE"],
        },
      },
    ],
  });
}

function isHostPort(address: string): boolean {
  const colon = address.lastIndexOf(":");
  if (colon <= 0) {
    return false;
  }
  const host = address.slice(0, colon);
  const bracketed = host.startsWith("[") && host.endsWith("]");
  return (bracketed || !host.includes(":")) && validPort(address.slice(colon + 1));
}

function validPort(text: string | undefined): boolean {
  return text !== undefined && /^\d{1,5}$/.test(text) && Number(text) >= 1 && Number(text) <= 65535;
}
