-- Search inside conversations (GET /api/llm/search): full text over every message a user has,
-- every branch, written in the same transaction as the message itself (a trigger on
-- chat_messages), so there is no second system to keep in step and a deleted session's
-- messages leave the results with it (the cascade).
--
-- The text-search configuration is SEARCH_LANGUAGE (default `simple`: no stemming, no stop
-- words, right for any language); the server writes it here at start, the trigger reads it,
-- and searches read it, so the index and the queries always agree. Changing it applies to
-- new messages; `flask reindex-search --all` rebuilds the others.
create table if not exists public.message_search_settings (
    singleton boolean  primary key default true check (singleton),
    config    regconfig not null default 'simple'
);
insert into public.message_search_settings (singleton) values (true) on conflict do nothing;
alter table public.message_search_settings enable row level security;

alter table public.chat_messages add column if not exists search_vector tsvector;

create or replace function public.chat_messages_search_vector()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    new.search_vector := to_tsvector(
        (select s.config from public.message_search_settings s where s.singleton), new.content);
    return new;
end;
$$;

drop trigger if exists chat_messages_search_vector on public.chat_messages;
create trigger chat_messages_search_vector
    before insert or update of content on public.chat_messages
    for each row execute function public.chat_messages_search_vector();

-- Newest first, a user's messages: the recent order, and the first step of every search (the
-- newest messages are read before the index is asked, see backend/search/store.py). In the
-- search's own order to the last column, so a page newest first stops at its last match.
create index if not exists chat_messages_user_recent_idx
    on public.chat_messages (user_id, created_at desc nulls last, session_row_id desc, message_id desc);

-- The words: led by user_id where btree_gin is installed (sql/012 installs it where available),
-- so a search reads only the caller's entries; without it, every user's entries of the word.
-- Substrings (scripts written without spaces, fragments): pg_trgm's index, where installed.
do $$
declare
    trgm_schema text;
    gin_schema text;
begin
    select max(n.nspname) filter (where e.extname = 'pg_trgm'), max(n.nspname) filter (where e.extname = 'btree_gin')
      into trgm_schema, gin_schema
      from pg_extension e join pg_namespace n on n.oid = e.extnamespace;
    if gin_schema is not null then
        execute format('create index if not exists chat_messages_search_idx on public.chat_messages '
                       'using gin (user_id %I.text_ops, search_vector)', gin_schema);
    else
        execute 'create index if not exists chat_messages_search_idx on public.chat_messages using gin (search_vector)';
    end if;
    if trgm_schema is null then
        raise notice 'pg_trgm is not installed: substring search of messages runs without its index';
    elsif gin_schema is not null then
        execute format('create index if not exists chat_messages_trgm_idx on public.chat_messages '
                       'using gin (user_id %I.text_ops, content %I.gin_trgm_ops)', gin_schema, trgm_schema);
    else
        execute format('create index if not exists chat_messages_trgm_idx on public.chat_messages '
                       'using gin (content %I.gin_trgm_ops)', trgm_schema);
    end if;
end;
$$;

revoke execute on function public.chat_messages_search_vector() from public;
do $$
declare
    role_name text;
begin
    foreach role_name in array array['anon', 'authenticated'] loop
        if exists (select 1 from pg_roles where rolname = role_name) then
            execute format('revoke all on public.message_search_settings from %I', role_name);
            execute format('revoke execute on function public.chat_messages_search_vector() from %I', role_name);
        end if;
    end loop;
end;
$$;
