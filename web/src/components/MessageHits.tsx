import type { MessageSearch, SearchHit } from "../hooks/useMessageSearch";
import { snippetParts } from "./snippet";

interface Props {
  /** The search in force (the list's box, once typing pauses). */
  query: string;
  search: MessageSearch;
  onOpen(hit: SearchHit): void;
}

/** Messages that match the search, under the chats whose names match: each its chat, who wrote it and
 *  a snippet with the matches marked (text nodes only: the snippet is plain text, never markup). */
export function MessageHits({ query, search, onOpen }: Props) {
  const { hits, loading, hasMore, error, loadMore } = search;
  if (!query) return null;
  return (
    <section className="message-hits" aria-labelledby="message-hits-title" data-testid="message-hits">
      <h3 id="message-hits-title" className="group-name">In messages</h3>
      {hits.length > 0 && (
        <ul aria-labelledby="message-hits-title">
          {hits.map((hit) => (
            <li key={hit.message_id}>
              <button type="button" className="hit" data-testid="message-hit" data-session-id={hit.session_id}
                      data-message-id={hit.message_id} onClick={() => onOpen(hit)}>
                <span className="hit-head">
                  <span className="hit-session" data-testid="hit-session">{hit.session_name}</span>
                  <span className="hit-role">{hit.role === "user" ? "You" : "Reply"}</span>
                </span>
                <span className="hit-snippet" data-testid="hit-snippet">
                  {snippetParts(hit.snippet, hit.highlights).map((part, i) =>
                    part.marked ? <mark key={i}>{part.text}</mark> : <span key={i}>{part.text}</span>)}
                </span>
                {!hit.on_active_branch && <span className="tag hit-branch" data-testid="hit-other-branch">on another version</span>}
              </button>
            </li>
          ))}
        </ul>
      )}
      {!loading && hits.length === 0 && !error && (
        <p className="no-results" role="status" data-testid="no-message-hits">No messages match.</p>
      )}
      {error !== null && hits.length === 0 && (
        <p className="no-results" role="status" data-testid="message-hits-error">Messages could not be searched.</p>
      )}
      {loading && <p className="more" role="status">Searching messages…</p>}
      {hasMore && !loading && (
        <button type="button" className="more-hits" data-testid="more-hits" onClick={loadMore}>More messages</button>
      )}
    </section>
  );
}
