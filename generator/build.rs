//! Embeds the minijinja templates of `templates/` (the `.j2` files) into the crate; see
//! `render::Templates`.

fn main() {
    minijinja_embed::embed_templates!("../templates", &[".j2"][..]);
}
