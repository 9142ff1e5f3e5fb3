// The typed client: openapi-fetch over the server's own OpenAPI types (schema.d.ts).
//
//   const api = createApi({ baseUrl: "", token: null });        // cookie sign-in, same origin
//   const { data, error, response } = await api.GET("/api/llm/sessions", { params: { query: { limit: 50 } } });
//
// Every request sends credentials (the session cookie, also across origins allowed by the
// server's CORS_ORIGINS) and `X-Requested-With`, which the server requires on state-changing
// requests a cookie authenticates (its CSRF check). With a bearer token, `Authorization` too.
import createClient, { type Client, type FetchResponse, type MaybeOptionalInit, type Middleware } from "openapi-fetch";
import type { HttpMethod, MediaType, PathsWithMethod } from "openapi-typescript-helpers";
import type { components, paths } from "./schema";

export type Schemas = components["schemas"];
export type Session = Schemas["SessionOut"];
export type Message = Schemas["MessageOut"];
export type User = Schemas["UserOut"];
export type ErrorBody = Schemas["ErrorResponse"];

export interface ApiConfig {
  /** Where the API lives: "" for the same origin (or Vite's proxy), else e.g. "https://api.example.com". */
  baseUrl: string;
  /** A Supabase access token; null signs in with the cookie. */
  token: string | null;
}

// openapi-fetch infers a call's options from the call itself and then only checks that they fit,
// so a misspelt field (`body: { session_nam: "x" }`) compiles. These methods take each operation's
// own option type instead: the compiler's excess-property check refuses any field the server's
// document does not list (request bodies are closed there: additionalProperties false).
type Options<M extends HttpMethod, P extends PathsWithMethod<paths, M>> = MaybeOptionalInit<paths[P], M>;
type StrictMethod<M extends HttpMethod> = <P extends PathsWithMethod<paths, M>>(
  url: P,
  ...init: undefined extends Options<M, P> ? [Options<M, P>?] : [Options<M, P>]
) => Promise<FetchResponse<Extract<paths[P][M], Record<string | number, any>>, Options<M, P>, MediaType>>;

/** The typed client: `api.GET("/api/llm/sessions", {...})`, and POST, PUT, DELETE. */
export interface Api {
  GET: StrictMethod<"get">;
  POST: StrictMethod<"post">;
  PUT: StrictMethod<"put">;
  DELETE: StrictMethod<"delete">;
  use: Client<paths>["use"];
}

export function requestHeaders(config: ApiConfig): Record<string, string> {
  const headers: Record<string, string> = { "X-Requested-With": "fetch" };
  if (config.token) headers.Authorization = `Bearer ${config.token}`;
  return headers;
}

export function createApi(config: ApiConfig): Api {
  const client = createClient<paths>({ baseUrl: config.baseUrl, credentials: "include" });
  const auth: Middleware = {
    onRequest({ request }) {
      for (const [name, value] of Object.entries(requestHeaders(config))) request.headers.set(name, value);
      return request;
    },
  };
  client.use(auth);
  return client as unknown as Api;
}

/** A failed request, with what a person needs to read: the server's code and message, and Retry-After. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly retryAfterSeconds: number | null = null,
    readonly fields: Record<string, string> | null = null,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

function isErrorBody(value: unknown): value is ErrorBody {
  return typeof value === "object" && value !== null && (value as { success?: unknown }).success === false
    && typeof (value as { error?: unknown }).error === "object";
}

/** An ApiError from a response that failed (its JSON error body, or the status alone). */
export function apiError(response: Response, body: unknown): ApiError {
  const retry = response.headers.get("Retry-After");
  const retryAfter = retry !== null && /^\d+(\.\d+)?$/.test(retry) ? Math.ceil(Number(retry)) : null;
  if (isErrorBody(body)) {
    return new ApiError(response.status, body.error.code, body.error.message, retryAfter, body.error.fields ?? null);
  }
  return new ApiError(response.status, `http_${response.status}`, response.statusText || "Request failed", retryAfter);
}

/** The data of an openapi-fetch result, or throw its error as an ApiError. */
export function unwrap<T>(result: { data?: T; error?: unknown; response: Response }): T {
  if (result.data === undefined) throw apiError(result.response, result.error);
  return result.data;
}

/** Words for an error, never a blank screen. */
export function describeError(error: unknown): string {
  if (error instanceof ApiError) {
    switch (error.code) {
      case "session_busy":
        return "This chat is still answering (in another tab?). Wait for the reply to finish, then try again.";
      case "session_archived":
        return "This chat is archived. Unarchive it to continue the conversation.";
      case "rate_limited": // the server's message already says when to try again
        return error.message;
      case "upstream_error":
        return "The model failed to answer. Try again.";
      case "upstream_timeout":
        return "The model took too long to answer. Try again.";
      case "upstream_rate_limited":
        return "The model is busy right now (rate limited). Try again in a moment.";
      case "session_deleted":
        return "This chat was deleted while answering.";
      case "unauthorized":
        return "You are signed out. Sign in again.";
      default:
        if (error.status === 429) {
          return `Too many requests.${error.retryAfterSeconds !== null ? ` Try again in ${error.retryAfterSeconds} s.` : ""}`;
        }
        return error.message || `Request failed (${error.status})`;
    }
  }
  if (error instanceof DOMException && error.name === "AbortError") return "Stopped.";
  if (error instanceof TypeError) return "Cannot reach the server. Check your connection.";
  return error instanceof Error ? error.message : String(error);
}
