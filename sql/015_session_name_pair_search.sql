-- Search for two characters (GET /api/llm/sessions?q=ta): a trigram index
-- cannot serve it (ILIKE '%ta%' holds no trigram), so a search that matches
-- little or nothing read every session of the user (40 ms at 100,000).
--
-- This index holds the trigrams of the lowered name with every character
-- doubled ('Data' -> 'ddaattaa'): two characters 'ta' become 'ttaa', whose
-- trigrams ('tta', 'taa') it can look up. A name holding 'ta' always holds
-- 'ttaa' once doubled, so the index never misses a match; the query keeps the
-- plain test as well, which drops the rare extra rows the doubling admits.
-- The query must spell the expression exactly as here (backend/sessions/store.py
-- PAIR_SEARCH_EXPRESSION); built-in immutable functions only, so nothing new is
-- callable through Supabase's Data API.
--
-- Same conditions and layout as 012: only where pg_trgm is installed, led by
-- user_id where btree_gin is there too.
do $$
declare
    trgm_schema text;
    gin_schema text;
    expression text := $expr$(regexp_replace(lower(session_name), '(.)', '\1\1', 'g'))$expr$;
begin
    select max(n.nspname) filter (where e.extname = 'pg_trgm'), max(n.nspname) filter (where e.extname = 'btree_gin')
      into trgm_schema, gin_schema
      from pg_extension e join pg_namespace n on n.oid = e.extnamespace;
    if trgm_schema is null then
        raise notice 'pg_trgm is not installed: two-character session search runs without its index';
    elsif gin_schema is not null then
        execute format(
            'create index if not exists chat_sessions_name_pairs_idx on public.chat_sessions '
            'using gin (user_id %I.text_ops, %s %I.gin_trgm_ops)', gin_schema, expression, trgm_schema);
    else
        execute format(
            'create index if not exists chat_sessions_name_pairs_idx on public.chat_sessions '
            'using gin (%s %I.gin_trgm_ops)', expression, trgm_schema);
    end if;
end;
$$;
